"""What the app table reads and writes besides its records: export files, imported code, the checks of a spec."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from migrated._names import check_app_name
from migrated.checkpoint import Export, Store, code_bundle, parse_policy, read_export
from migrated.checkpoint._archive import Sign
from migrated.daemon._records import AppSpec
from migrated.errors import AppFileError, ExportFileError, UsageError

__all__ = ["RESTART_POLICIES", "check_spec", "code_of", "export_file", "read_export_file", "spec_from_code"]

RESTART_POLICIES = ("on-crash", "never")


def export_file(store: Store, name: str, version: int, path: Path, sign: Sign) -> int:
    """Write a signed export of ``name``'s ``version`` to ``path``, replaced whole; return the bytes written."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "wb") as out:
            written = store.export(name, out, version, sign)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AppFileError(f"cannot write {path} ({exc.strerror or exc}); choose another -o path") from None
    return written


def read_export_file(path: Path) -> Export:
    """An export file, checked whole."""
    try:
        with open(path, "rb") as src:
            return read_export(src, str(path))
    except OSError as exc:
        raise AppFileError(f"cannot read {path} ({exc.strerror or exc}); give the path of a .mig export") from None


def code_of(export: Export, source: str) -> dict[str, bytes]:
    """The code bundle of a checked export."""
    try:
        return code_bundle(export.manifest, export.chunks)
    except ValueError as exc:  # Damage: the file was checked whole, so only a bug or a race gets here
        raise ExportFileError(f"{source} is damaged ({exc}); export the version again") from None


def spec_from_code(name: str, folder: Path, manifest: Any, code: Mapping[str, bytes], cwd: str) -> AppSpec:
    """The spec that runs an app from its unpacked code bundle in ``folder``."""
    if manifest.app_module == "migrated.runtime._repl":
        return AppSpec(name=name, kind="repl", file="", app_class="", cwd=cwd)
    stem = manifest.app_module.removeprefix("_mig_app_")
    main = next((p for p in code if Path(p).stem == stem and "/" not in p), next(iter(code), f"{stem}.py"))
    return AppSpec(name=name, kind="script", file=str(folder / main), app_class=manifest.app_class, cwd=cwd)


def check_spec(spec: AppSpec) -> None:
    """Refuse a spec that cannot run, in one sentence."""
    if spec.keep:
        parse_policy(spec.keep)
    if spec.restart not in RESTART_POLICIES:
        raise UsageError(f"--restart {spec.restart!r} is not a policy; use on-crash or never")
    if spec.autosave < 0 or (0 < spec.autosave < 0.1):
        raise UsageError(f"--autosave {spec.autosave:g} is not a period; give seconds, 0.1 or more (0: no autosave)")
    check_app_name(spec.name)
    if not os.path.isdir(spec.cwd):
        raise AppFileError(f"the working directory {spec.cwd} does not exist; run mig from an existing directory")
    if spec.kind == "script" and not Path(spec.file).is_file():
        raise AppFileError(f"{spec.file} is not a file; give the path of an app's .py file")
