"""The `edadm` command line: one module per group of commands (quantize.py, images.py,
tools.py), each adding its parsers; `edadm quantize`'s flags are generated from the config.

Every user error ends with one line on stderr and exit code 2; outputs are written to a
temporary path and renamed, so a failed run leaves nothing half-written.
"""
from __future__ import annotations

import logging
import sys

from ..errors import EdadmError
from . import images, quantize, tools
from .args import Parser, with_prompts  # noqa: F401  (with_prompts: used by tests and bench)
from .quantize import quant_config  # noqa: F401
from .tools import EXPORT_TARGETS  # noqa: F401

log = logging.getLogger("edadm")


def build_parser() -> Parser:
    from ..version import __version__

    ap = Parser(prog="edadm", description="Post-training quantization of diffusion models (EDA-DM).")
    ap.add_argument("--version", action="version", version=f"edadm {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in (quantize, images, tools):
        module.add_parsers(sub)
    return ap


# command name -> function (tests replace an entry to stop before the work)
COMMANDS = {"quantize": quantize.cmd_quantize, "sample": images.cmd_sample, "evaluate": images.cmd_evaluate,
            "score": images.cmd_score, "report": tools.cmd_report, "export": tools.cmd_export,
            "demo": tools.cmd_demo, "zoo": tools.cmd_zoo}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        logging.getLogger("edadm").setLevel(logging.DEBUG if args.verbose else logging.INFO)
        return COMMANDS[args.command](args)
    except EdadmError as exc:
        print(f"edadm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edadm: interrupted", file=sys.stderr)
        return 130
