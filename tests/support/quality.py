"""Planted English and Japanese answers, each made to fire one response check (quality tests)."""



EN_PROMPT = "Why can camels survive for long without water?"


JA_PROMPT = "ヴァージン・オーストラリアはいつから運航を開始したのですか？"


GOOD_EN = "Camels store fat in their humps and their kidneys conserve water, so they can go a long time without drinking."


GOOD_JA = "ヴァージン・オーストラリアは2000年8月31日にヴァージン・ブルーとして運航を開始しました。当初は2機の航空機で一つの路線を運航していました。"


CASES = {  # check -> (firing response, prompt, lang, finish_reason)
    "empty": (" \n ", EN_PROMPT, "en", "stop"),
    "truncated": (GOOD_EN, EN_PROMPT, "en", "length"),
    "repetition": ("The camel walks. " * 30, EN_PROMPT, "en", "stop"),
    "wrong_language": (GOOD_EN, JA_PROMPT, "ja", "stop"),
    "refusal": ("I'm sorry, but I can't help with that request.", EN_PROMPT, "en", "stop"),
    "self_identification": ("As an AI language model, I think camels are great animals for deserts.", EN_PROMPT, "en", "stop"),
    "pii_leak": (GOOD_EN + " Write to camel.facts@desert-tours.co.uk for more.", EN_PROMPT, "en", "stop"),
}


