"""Python dependencies of the engine inside Slicer, installed on demand, never at import.

* torch and torchvision come from the **PyTorch extension** (``PyTorchUtils``), which picks
  the build matching the computer's GPU driver (CUDA or CPU). A plain ``pip install torch``
  inside Slicer gets that wrong too easily.
* Everything else is listed in ``Resources/requirements.txt`` and installed with
  ``slicer.packaging.pip_ensure`` (Slicer >= 5.12: check, confirm, progress dialog, restart
  prompt), falling back to ``slicer.util.pip_install`` on older Slicer.

Nothing here runs at module import; the module calls :func:`ensure_dependencies` when the
user presses Apply (or a script calls ``process``). Failures become one
:class:`DependencyError` with a message a user can act on, which the GUI shows in a dialog.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

__all__ = [
    "REQUESTER",
    "TORCH_PACKAGES",
    "TORCH_REQUIREMENT",
    "DependencyError",
    "ensure_dependencies",
    "ensure_python_packages",
    "ensure_torch",
    "missing_requirements",
    "read_requirements",
    "requirement_satisfied",
    "torch_available",
]


log = logging.getLogger(__name__)

REQUESTER = "MicrocalcAI"
#: Lowest torch/torchvision the engine is tested with (see the repository's constraints.txt).
TORCH_REQUIREMENT = ">=2.2"
TORCH_PACKAGES = ("torch", "torchvision")


class DependencyError(RuntimeError):
    """A dependency is missing and could not (or may not) be installed; message is for users."""


def read_requirements(path: Path) -> list[str]:
    """Requirement lines of a requirements.txt (comments, blanks and pip options skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            out.append(line)
    return out


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0]


def requirement_satisfied(requirement: str) -> bool:
    """Whether an installed distribution satisfies ``requirement`` (no subprocess, no import).

    Uses ``packaging`` (shipped with Slicer and pip) for version specifiers and markers;
    without it, presence of the distribution is all that is checked.
    """
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging ships with pip
        try:
            importlib.metadata.version(_requirement_name(requirement))
        except importlib.metadata.PackageNotFoundError:
            return False
        return True
    req = Requirement(requirement)
    if req.marker is not None and not req.marker.evaluate():
        return True
    try:
        installed = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return req.specifier.contains(installed, prereleases=True)


def missing_requirements(requirements: Sequence[str]) -> list[str]:
    """The requirements that are not satisfied, in the given order."""
    return [r for r in requirements if not requirement_satisfied(r)]


def torch_available() -> bool:
    """True when torch and torchvision import (a broken install counts as missing)."""
    for name in TORCH_PACKAGES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a corrupt torch raises all kinds of errors
            log.info("%s is not usable: %s", name, exc)
            return False
    return True


def ensure_torch(interactive: bool = True) -> None:
    """Make torch and torchvision importable, through the PyTorch extension if needed."""
    if torch_available():
        return
    try:
        import PyTorchUtils  # the PyTorch extension's module (EXTENSION_DEPENDS PyTorch)
    except ImportError as exc:
        raise DependencyError(
            "MicrocalcAI needs PyTorch. Install the 'PyTorch' extension from the Extension Manager, "
            "restart Slicer and try again."
        ) from exc
    logic = PyTorchUtils.PyTorchUtilsLogic()
    try:
        # installTorch installs torch *and* torchvision (light-the-torch picks the CUDA/CPU build),
        # so it is also the way to add a missing torchvision next to an installed torch.
        if not logic.torchInstalled() or importlib.util.find_spec("torchvision") is None:
            try:
                torch = logic.installTorch(askConfirmation=interactive, torchVersionRequirement=TORCH_REQUIREMENT)
            except TypeError:  # older PyTorchUtils without the version argument
                torch = logic.installTorch(askConfirmation=interactive)
            if torch is None:
                raise DependencyError("PyTorch was not installed (cancelled); MicrocalcAI cannot run without it.")
    except DependencyError:
        raise
    except Exception as exc:  # noqa: BLE001 - pip/network/permission failures surface here
        raise DependencyError(
            f"Installing PyTorch failed: {exc}. Open the PyTorch Utils module to install it manually, "
            "then restart Slicer."
        ) from exc
    if not torch_available():
        raise DependencyError(
            "PyTorch is installed but torch/torchvision cannot be imported. Restart Slicer; if that does not help, "
            "reinstall PyTorch from the PyTorch Utils module."
        )


def ensure_python_packages(
    requirements_file: Path,
    interactive: bool = True,
    confirm: Optional[Callable[[str], bool]] = None,
) -> list[str]:
    """Install the packages of ``requirements_file`` that are missing; returns what was missing.

    ``confirm(message)`` asks the user on older Slicer versions (``pip_ensure`` has its own
    dialog); non-interactive runs install without asking, as a script asked for the run.
    """
    requirements = read_requirements(requirements_file)
    missing = missing_requirements(requirements)
    if not missing:
        return []
    log.info("missing Python packages: %s", ", ".join(missing))
    try:
        pip_ensure = _pip_ensure()
        if pip_ensure is not None:
            # pip_ensure takes packaging Requirement objects (some Slicer versions accept only those).
            pip_ensure(
                _as_requirements(missing), requester=REQUESTER, prompt_install=interactive, skip_in_testing=False
            )
        else:
            if (
                interactive
                and confirm is not None
                and not confirm(
                    "MicrocalcAI needs these Python packages, which will be installed now:\n\n" + "\n".join(missing)
                )
            ):
                raise DependencyError("Installation of the required Python packages was cancelled.")
            import slicer

            slicer.util.pip_install(" ".join(_quote(r) for r in missing))
    except DependencyError:
        raise
    except RuntimeError as exc:  # pip_ensure: "User declined package installation"
        raise DependencyError(f"The required Python packages were not installed ({exc}).") from exc
    except Exception as exc:  # noqa: BLE001 - CalledProcessError, network, permissions
        raise DependencyError(
            f"Installing the required Python packages failed: {exc}. Check the network connection and the "
            "Python console log, then try again (or install them with slicer.util.pip_install)."
        ) from exc
    importlib.invalidate_caches()
    still = missing_requirements(requirements)
    if still:
        raise DependencyError(
            f"These Python packages are still missing after installation: {', '.join(still)}. Restart Slicer and try again."
        )
    return missing


def _pip_ensure() -> Optional[Callable[..., Any]]:
    """``slicer.packaging.pip_ensure`` where this Slicer has it (5.12+), else None."""
    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        return None
    function = getattr(packaging, "pip_ensure", None)
    return function if callable(function) else None


def _as_requirements(requirements: Sequence[str]) -> list[Any]:
    """``packaging.requirements.Requirement`` objects for ``slicer.packaging.pip_ensure``."""
    from packaging.requirements import Requirement

    return [Requirement(r) for r in requirements]


def _quote(requirement: str) -> str:
    return f'"{requirement}"' if any(c in requirement for c in "<>; ") else requirement


def ensure_dependencies(
    requirements_file: Path, interactive: bool = True, confirm: Optional[Callable[[str], bool]] = None
) -> None:
    """torch/torchvision first (PyTorch extension), then the other packages."""
    ensure_torch(interactive=interactive)
    ensure_python_packages(requirements_file, interactive=interactive, confirm=confirm)
