"""Drop the EVAR plugin into an EVAR checkout (nttcslab/eval-audio-repr).

    python -m atst_evar.install EVAR_DIR

copies ``ar_atst_pkg.py`` to ``EVAR_DIR/evar/``, the two configs to ``EVAR_DIR/config/``, and adds
``import evar.ar_atst_pkg`` after the last ``import evar.ar_*`` line of ``lineareval.py`` and
``finetune.py`` where it is missing. Running it again changes nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent
IMPORT_LINE = "import evar.ar_atst_pkg"
RUNNERS = ("lineareval.py", "finetune.py")


def add_import(script: Path) -> bool:
    """Insert the plugin's import after the script's last ``import evar.ar_`` line; False if present."""
    lines = script.read_text().splitlines(keepends=True)
    if any(line.strip() == IMPORT_LINE for line in lines):
        return False
    anchors = [i for i, line in enumerate(lines) if line.startswith("import evar.ar_") or line.startswith("from evar")]
    if not anchors:
        raise ValueError(f"{script}: no 'import evar...' line to add the plugin's import after")
    lines.insert(anchors[-1] + 1, IMPORT_LINE + "\n")
    script.write_text("".join(lines))
    return True


def install(evar_dir: str | Path) -> list[Path]:
    """Install into ``evar_dir``; returns the files written or changed."""
    root = Path(evar_dir)
    if not (root / "evar" / "ar_base.py").is_file():
        raise FileNotFoundError(f"{root} is not an EVAR checkout (evar/ar_base.py not found)")
    changed = [Path(shutil.copy2(HERE / "ar_atst_pkg.py", root / "evar" / "ar_atst_pkg.py"))]
    for config in sorted((HERE / "config").glob("*.yaml")):
        changed.append(Path(shutil.copy2(config, root / "config" / config.name)))
    changed += [root / name for name in RUNNERS if (root / name).is_file() and add_import(root / name)]
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atst_evar.install", description=__doc__.split("\n\n")[0])
    parser.add_argument("evar_dir", type=Path, help="an EVAR checkout (holding evar/ar_base.py)")
    args = parser.parse_args(argv)
    try:
        for path in install(args.evar_dir):
            print(path)
    except (FileNotFoundError, ValueError) as err:
        print(f"atst_evar.install: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
