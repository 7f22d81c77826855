"""fiber-det: FIBER (fusion-in-the-backbone vision-language detection) as a detectron2 extension."""
import re
from pathlib import Path

from setuptools import find_packages, setup

_init = Path(__file__).parent / "fiber_det" / "__init__.py"
_version = re.search(r'__version__ = "([^"]+)"', _init.read_text()).group(1)

setup(
    name="fiber-det",
    version=_version,
    description="FIBER (Dou et al. 2022) rebuilt as a detectron2 extension: CPU-first, parity-checked",
    # configs/ (where users read and edit them) ships as package data: fiber_det.model_zoo finds
    # them by relative path wherever the package is installed, as detectron2's model zoo does.
    packages=find_packages(include=["fiber_det", "fiber_det.*"]) + ["fiber_det.model_zoo.configs"],
    package_dir={"fiber_det.model_zoo.configs": "configs"},
    package_data={"fiber_det.model_zoo.configs": ["*.yaml", "**/*.yaml"]},
    python_requires=">=3.10",
    # Everything is pinned in requirements.txt and installed by dev/install_env.sh; the list here
    # only names what `import fiber_det` needs, so `pip install -e .` never pulls a second torch.
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "transformers>=4.40",
        "fvcore",
        "pycocotools",
    ],
    extras_require={"lvis": ["lvis"], "d3": ["ddd-dataset"], "dev": ["pytest", "hypothesis", "ruff"]},
)
