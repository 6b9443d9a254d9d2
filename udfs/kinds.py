"""LLM work kinds: what one engine request is for, and where its output goes.

Every LLM stage (translate, generate, judge, reverse) runs the same engine job (udfs.generation on the
executors, instructlake.jobs.llm on the driver); the `task` column of an input row names its kind here. A
kind declares its output table and the output columns that key a request (`id_column`, `model_column`),
the input columns beyond the common ones, how a row becomes chat messages and how an engine result
becomes table rows. The engine job, error resolution (jobs.llm.select.error_status), the sinks and
maintain iterate this registry: a new kind is one class registered here (with `register`), its table in
jobs/tables.py, and a stage config block.

Input rows (`INPUT_COLUMNS`): `prompt_id` is the id of the unit of work (the request key, its seed, the
input_id of its generation_errors row): a prompt id for respond and translate, a response id for judge, a
fragment id for the reverse steps; `origin_prompt_id` the prompt it came from; `attempt` this run's attempt
number (previous failures + 1).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, ClassVar

from instructlake.udfs.prompts import (
    INSTRUCT_TEMPLATE,
    JUDGE_TEMPLATE,
    PASSAGE_TEMPLATE,
    TRANSLATE_TEMPLATE,
    Messages,
    instruct_messages,
    judge_messages,
    lang_name,
    parse_judge_score,
    respond_messages,
    translate_messages,
)
from instructlake.udfs.text import content_hash, normalize, prompt_id

RESPOND, RESPOND_TRANSLATED, TRANSLATE, JUDGE = "respond", "respond_translated", "translate", "judge"
TO_EN, INSTRUCT, SCORE, TO_NATIVE = "reverse_to_en", "reverse_instruct", "reverse_score", "reverse_to_native"
REVERSE_STEPS = (TO_EN, INSTRUCT, SCORE, TO_NATIVE)
INPUT_COLUMNS = ("prompt_id", "origin_prompt_id", "task", "lang", "text", "attempt")


@dataclass(frozen=True)
class RowMeta:
    """What every output row of one chunk shares."""

    gen_config_id: str
    engine: str | None  # the engine backend
    engine_version: str
    created_at: dt.datetime


def response_id(prompt_id_: str, model: str, gen_config_id_: str, sample_index: int) -> str:
    return content_hash(prompt_id_, model, gen_config_id_, str(sample_index))


class Kind:
    """One kind of LLM request. `task` (the udfs.generation.LLMTask of the job) carries what the stage
    configured: model, sampling, system prompt, template, target language; `row` is one input row (a
    namedtuple of the job's input columns); `result` the engine's udfs.engine.Result for it."""

    name: ClassVar[str]
    table: ClassVar[str]
    id_column: ClassVar[str]  # the output column that holds the request key (the input's prompt_id)
    model_column: ClassVar[str] = "model"
    extra_inputs: ClassVar[tuple[str, ...]] = ()  # input columns beyond INPUT_COLUMNS
    # One output row per sample (n of them), appended: their ids are unique by construction, so a direct
    # commit needs no merge. Otherwise one row per request, merged on the table's keys (a new config
    # replaces the row).
    per_sample: ClassVar[bool] = False

    def messages(self, task: Any, row: Any) -> Messages:
        raise NotImplementedError

    def rows(self, task: Any, row: Any, result: Any, meta: RowMeta) -> list[dict[str, Any]]:
        raise NotImplementedError


KINDS: dict[str, Kind] = {}


def register(cls: type[Kind]) -> type[Kind]:
    """Class decorator: add a kind to the registry (its name must be new)."""
    if cls.name in KINDS:
        raise ValueError(f"LLM kind {cls.name!r} is already registered ({type(KINDS[cls.name]).__name__})")
    KINDS[cls.name] = cls()
    return cls


def kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown LLM kind {name!r}; registered: {sorted(KINDS)}") from None


@register
class Respond(Kind):
    """A prompt answered n times (responses, one row per sample)."""

    name, table, id_column, per_sample = RESPOND, "responses", "prompt_id", True

    def messages(self, task: Any, row: Any) -> Messages:
        return respond_messages(row.text, task.system_prompt)

    def rows(self, task: Any, row: Any, result: Any, meta: RowMeta) -> list[dict[str, Any]]:
        s = task.sampling
        return [
            dict(
                response_id=response_id(row.prompt_id, task.model, meta.gen_config_id, i), prompt_id=row.prompt_id,
                origin_prompt_id=row.origin_prompt_id, task=row.task, lang=row.lang, model=task.model,
                gen_config_id=meta.gen_config_id, sample_index=i, n=s.n, temperature=s.temperature, top_p=s.top_p,
                max_tokens=s.max_tokens, seed=s.seed, system_prompt=task.system_prompt, prompt_text=row.text, text=text,
                finish_reason=reason, prompt_tokens=result.prompt_tokens, completion_tokens=tokens,
                latency_s=result.latency_s, engine=meta.engine, engine_version=meta.engine_version,
                run_id=task.run_id, created_at=meta.created_at,
            )  # fmt: skip
            for i, (text, reason, tokens) in enumerate(zip(result.texts, result.finish_reasons, result.completion_tokens))
        ]


@register
class RespondTranslated(Respond):
    """A translated prompt (translations.translated_prompt_id) answered n times."""

    name = RESPOND_TRANSLATED


@register
class Translate(Kind):
    """A prompt translated into task.target_lang; translated_prompt_id names the translation as a prompt."""

    name, table, id_column = TRANSLATE, "translations", "prompt_id"

    def messages(self, task: Any, row: Any) -> Messages:
        template = task.template or TRANSLATE_TEMPLATE
        return translate_messages(row.text, lang_name(task.target_lang or ""), lang_name(row.lang or ""), template=template)

    def rows(self, task: Any, row: Any, result: Any, meta: RowMeta) -> list[dict[str, Any]]:
        text = result.texts[0]
        return [
            dict(
                prompt_id=row.prompt_id, target_lang=task.target_lang, model=task.model,
                translated_prompt_id=prompt_id(normalize(text)), source_lang=row.lang, source_text=row.text,
                text=text, finish_reason=result.finish_reasons[0], prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens[0], gen_config_id=meta.gen_config_id, run_id=task.run_id,
                created_at=meta.created_at,
            )
        ]  # fmt: skip


@register
class Judge(Kind):
    """One response scored (MT-Bench single-answer grading): the row's prompt_id is the response id, text
    the question, answer the response. Kept whether or not a score parses: the rationale is the output."""

    name, table, id_column, model_column, extra_inputs = JUDGE, "judgements", "response_id", "judge_model", ("answer",)

    def messages(self, task: Any, row: Any) -> Messages:
        return judge_messages(row.text or "", row.answer or "", template=task.template or JUDGE_TEMPLATE, system=task.system_prompt)

    def rows(self, task: Any, row: Any, result: Any, meta: RowMeta) -> list[dict[str, Any]]:
        text = result.texts[0]
        return [
            dict(
                response_id=row.prompt_id, prompt_id=row.origin_prompt_id, judge_model=task.model,
                score=parse_judge_score(text), rationale=text, finish_reason=result.finish_reasons[0],
                prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens[0],
                gen_config_id=meta.gen_config_id, run_id=task.run_id, created_at=meta.created_at,
            )
        ]  # fmt: skip


class ReverseStep(Kind):
    """A step of reverse instructions over one corpus fragment (row prompt_id = the fragment's id, lang its
    language, text the step's input, answer the English passage where the step needs it)."""

    table, id_column, extra_inputs = "reverse_steps", "fragment_id", ("answer",)
    scored: ClassVar[bool] = False  # the output is a judgement whose [[n]] is the step's score

    def rows(self, task: Any, row: Any, result: Any, meta: RowMeta) -> list[dict[str, Any]]:
        text = result.texts[0]
        return [
            dict(
                fragment_id=row.prompt_id, step=row.task, model=task.model, gen_config_id=meta.gen_config_id,
                lang=row.lang, input=row.text, text=text, score=parse_judge_score(text) if self.scored else None,
                finish_reason=result.finish_reasons[0], prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens[0], run_id=task.run_id, created_at=meta.created_at,
            )
        ]  # fmt: skip


@register
class ReverseToEnglish(ReverseStep):
    name = TO_EN

    def messages(self, task: Any, row: Any) -> Messages:
        return translate_messages(row.text or "", "English", lang_name(row.lang), template=task.template or PASSAGE_TEMPLATE)


@register
class ReverseInstruct(ReverseStep):
    name = INSTRUCT

    def messages(self, task: Any, row: Any) -> Messages:
        return instruct_messages(row.text or "", template=task.template or INSTRUCT_TEMPLATE)


@register
class ReverseScore(ReverseStep):
    name, scored = SCORE, True

    def messages(self, task: Any, row: Any) -> Messages:
        return judge_messages(row.text or "", row.answer or "", template=task.template or JUDGE_TEMPLATE, system=task.system_prompt)


@register
class ReverseToNative(ReverseStep):
    name = TO_NATIVE

    def messages(self, task: Any, row: Any) -> Messages:
        return translate_messages(row.text or "", lang_name(row.lang), "English", template=task.template or TRANSLATE_TEMPLATE)


def output_keys() -> dict[str, tuple[str, str]]:
    """Output table -> (id column, model column) of the kinds that write it."""
    out: dict[str, tuple[str, str]] = {}
    for k in KINDS.values():
        cols = (k.id_column, k.model_column)
        if out.setdefault(k.table, cols) != cols:
            raise ValueError(f"kinds writing {k.table} disagree on its key columns: {out[k.table]} vs {cols}")
    return out
