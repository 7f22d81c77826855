"""fiber-det: FIBER (fusion-in-the-backbone vision-language detection) as a detectron2 extension."""
import os
import re
import sys
from pathlib import Path

from setuptools import find_packages, setup

_init = Path(__file__).parent / "fiber_det" / "__init__.py"
_version = re.search(r'__version__ = "([^"]+)"', _init.read_text()).group(1)


def _extensions():
    """The optional compiled DCN sampler ``fiber_det._C`` (see fiber_det/csrc/dcn_sample.cpp).

    Built when torch is importable at build time (``pip install --no-build-isolation``, as
    dev/install_env.sh does) unless ``FIBER_DET_BUILD_EXT=0``. It is optional twice over: a failed
    compile only warns, and without it the DCN uses ``grid_sample``, with identical results.
    """
    here = Path(__file__).parent
    if os.environ.get("FIBER_DET_BUILD_EXT", "1") == "0":
        # not built means not there: an editable install keeps an earlier build in the tree
        for old in (here / "fiber_det").glob("_C.*"):
            old.unlink()
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return [], {}

    class OptionalBuild(BuildExtension):
        """torch's BuildExtension, with a failed build of optional extensions a warning, not an
        abort (its compiler check and its ninja path raise errors that setuptools does not
        treat as build errors)."""

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as e:  # any compiler or toolchain failure
                if not all(getattr(ext, "optional", False) for ext in self.extensions):
                    raise
                print(
                    f"WARNING: the optional extension fiber_det._C was not built ({e}); the DCN "
                    "uses grid_sample (same results, slower on CPU)",
                    file=sys.stderr,
                )

    ext = CppExtension(
        "fiber_det._C",
        ["fiber_det/csrc/dcn_sample.cpp"],
        # -ffp-contract=off: no multiply-adds beyond the ones written out (the results must be
        # bitwise those of ATen's grid_sample); -fopenmp: torch's intra-op threads
        extra_compile_args=["-O3", "-ffp-contract=off", "-fopenmp"],
        extra_link_args=["-fopenmp"],
        optional=True,
    )
    return [ext], {"build_ext": OptionalBuild}


_ext_modules, _cmdclass = _extensions()

setup(
    name="fiber-det",
    version=_version,
    description="FIBER (Dou et al. 2022) rebuilt as a detectron2 extension: CPU-first, parity-checked",
    # configs/ (where users read and edit them) ships as package data: fiber_det.model_zoo finds
    # them by relative path wherever the package is installed, as detectron2's model zoo does.
    packages=find_packages(include=["fiber_det", "fiber_det.*"]) + ["fiber_det.model_zoo.configs"],
    package_dir={"fiber_det.model_zoo.configs": "configs"},
    package_data={"fiber_det.model_zoo.configs": ["*.yaml", "**/*.yaml"]},
    ext_modules=_ext_modules,
    cmdclass=_cmdclass,
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
