"""DCMTK's command line tools as scanners and converters in tests: storescu, echoscu, dcmc*.

``storescu(port, files, ...)`` returns a :class:`StoreRun` with the exit code, the output and the
status of each C-STORE response as DCMTK printed it ("Success", "Refused: ...", "Error: ...").
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def tool(name: str) -> str:
    """The DCMTK program ``name``: Debian's, never pynetdicom's namesakes in the venv's bin."""
    system = Path("/usr/bin") / name
    if system.exists():
        return str(system)
    return shutil.which(name) or name


def have_dcmtk() -> bool:
    return all(Path(tool(name)).exists() for name in ("storescu", "echoscu", "dcmcjpeg", "dcmcjpls", "dcmcrle"))


@dataclass
class StoreRun:
    returncode: int
    output: str
    responses: list[str]  # one per C-STORE response received, in order

    @property
    def successes(self) -> int:
        return sum(1 for r in self.responses if r.startswith("Success"))

    @property
    def failures(self) -> list[str]:
        return [r for r in self.responses if not r.startswith("Success") and not r.startswith("Warning")]

    @property
    def association_rejected(self) -> bool:
        return "Association Rejected" in self.output


def storescu(
    port: int,
    files: list[Path] | list[str],
    *,
    calling_ae: str = "SCANNER",
    called_ae: str = "M2UNET",
    host: str = "127.0.0.1",
    extra: list[str] | None = None,
    timeout: float = 120.0,
) -> StoreRun:
    """Send ``files`` in one association (proposing only what they need; going on after failures)."""
    cmd = [tool("storescu"), "-v", "-R", "-nh", "-aet", calling_ae, "-aec", called_ae, *(extra or []), host, str(port)]
    cmd += [str(f) for f in files]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    text = out.stdout + out.stderr
    return StoreRun(out.returncode, text, RESPONSE.findall(text))


def echoscu(
    port: int,
    *,
    calling_ae: str = "SCANNER",
    called_ae: str = "M2UNET",
    host: str = "127.0.0.1",
    extra: list[str] | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess:
    cmd = [tool("echoscu"), "-v", "-aet", calling_ae, "-aec", called_ae, *(extra or []), host, str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# storescu's option that proposes each kind's transfer syntax first
PROPOSE = {"jpeg-lossless": "-xs", "jpeg-ls": "-xt", "rle": "-xr"}


def _convert(tool: str, args: list[str], src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([tool, *args, str(src), str(dst)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{tool} failed on {src.name}: {out.stderr.strip()}")
    return dst


def compress(files: list[Path], folder: Path, kind: str) -> list[Path]:
    """Compress with DCMTK: ``jpeg-lossless`` (dcmcjpeg, process 14 SV1), ``jpeg-ls`` (dcmcjpls,
    lossless) or ``rle`` (dcmcrle). Returns the new files in the same order."""
    tool, args = {
        "jpeg-lossless": ("dcmcjpeg", ["+e1"]),
        "jpeg-ls": ("dcmcjpls", ["+el"]),
        "rle": ("dcmcrle", []),
    }[kind]
    return [_convert(tool, args, f, folder / f.name) for f in files]
