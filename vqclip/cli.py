"""The command line: argv -> config -> generate(). Maps arguments; holds no generation logic.

    vqclip "a prompt" [--config FILE ...] [key=value ...]   generate an image (or, with mode=story|zoom|
                                                            interpolate|restyle, an animation)
    vqclip models                                           list named models and what is cached
    vqclip download NAME [NAME ...]                         fetch named models ahead of time
    vqclip resume RUN_DIR [steps=N ...]                     continue an interrupted or finished run

Every user error ends with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import List, Optional, Sequence

from vqclip.config import iter_fields
from vqclip.errors import ResumeError, VQClipError
from vqclip.resume import RESUMABLE_KEYS

log = logging.getLogger("vqclip")
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")
SUBCOMMANDS = ("models", "download", "resume")


def _config_reference() -> str:
    lines = ["config keys (set in YAML files or as key=value; lists as size=[512,512]):"]
    for key, help_text, default in iter_fields():
        lines.append(f"  {key:<22} {help_text} (default: {default})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The generation parser; its --help lists every option and every config key."""
    parser = argparse.ArgumentParser(
        prog="vqclip",
        description="Text to image by VQGAN+CLIP latent optimisation. Other commands: "
                    "'vqclip models' lists named models, 'vqclip download NAME...' fetches them, "
                    "'vqclip resume RUN_DIR [steps=N]' continues a run.",
        epilog=_config_reference() + "\n\nexamples:\n"
               '  vqclip "watercolor portrait of a teacher"\n'
               '  vqclip "a red circle on a blue background" --config configs/shapes.yaml\n'
               '  vqclip "a lighthouse at dusk|fog:0.5" --config configs/hq.yaml steps=500 size=[512,512] seed=7\n'
               '  vqclip "a sunrise^a storm^a starry night" mode=story story.steps_per_prompt=100\n'
               '  vqclip --config configs/shapes.yaml --config configs/zoom.yaml\n'
               '  vqclip "a red circle" "a blue square" mode=interpolate animation.frames=48\n'
               '  vqclip "an oil painting" mode=restyle restyle.video=clip.mp4\n'
               "  (modes: docs/animation.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="*", metavar="PROMPT | key=value",
                        help='text prompts ("text:weight:stop", "|" separates several; replace the '
                             "config's prompts) and config overrides in omegaconf dotlist syntax")
    parser.add_argument("-c", "--config", action="append", default=[], metavar="FILE",
                        help="YAML config merged over the defaults (repeatable; later files win)")
    parser.add_argument("--no-save", action="store_true", help="write no files (for trying settings)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue the run in RUN_DIR (same as 'vqclip resume RUN_DIR'); steps=N extends it")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    parser.add_argument("-v", "--verbose", action="store_true", help="log model loading and details")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def _setup_logging(quiet: bool, verbose: bool) -> None:
    """Log vqclip's own messages to stderr; other libraries' only with --verbose.

    Errors other libraries log (open_clip's failed download, say) would repeat what the one-line
    error already says, so they stay out of the way unless asked for.
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vqclip: %(message)s"))
    if not verbose:
        handler.addFilter(lambda record: record.name.startswith("vqclip"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    log.setLevel(level)


def _run_generate(argv: Sequence[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    if args.version:
        from vqclip import __version__

        print(__version__)
        return 0
    _setup_logging(args.quiet, args.verbose)
    overrides = [i for i in args.items if _OVERRIDE.match(i)]
    prompts = [i for i in args.items if not _OVERRIDE.match(i)]
    if args.resume is not None:
        if prompts or args.config or args.no_save:
            raise ResumeError("a resumed run keeps its prompts, config and folder; allowed with --resume: "
                              "RUN_DIR and key=value for " + ", ".join(RESUMABLE_KEYS))
        from vqclip.resume import resume

        return _report(resume(args.resume, overrides, progress=not args.quiet))
    from vqclip.config import load_config
    from vqclip.generate import generate

    cfg = load_config(args.config, overrides, prompts=prompts or None)
    if cfg.mode == "image":
        result = generate(cfg, progress=not args.quiet, save=not args.no_save)
    else:
        from vqclip.animate import run_mode

        result = run_mode(cfg, progress=not args.quiet, save=not args.no_save)
    return _report(result)


def _report(result) -> int:
    """Print the files a run wrote; on an interrupt say how to resume and return 130."""
    for path in result.paths:
        print(path)
    cfg = result.config
    if result.interrupted:
        how = ""
        if getattr(result, "state_path", None):
            from vqclip.resume import resume_command

            how = f"; continue with: {resume_command(result.run_dir)}"
        log.warning("interrupted after step %d of %d; the image so far and the files above are complete%s",
                    len(result.losses), cfg.steps, how)
        return 130
    log.info("seed %d, final loss %.4f", result.seed, result.losses[-1])
    return 0


def _run_resume(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vqclip resume", description="Continue an interrupted run, or extend a finished one with steps=N. "
        "It continues in the same folder: frames go on, the video is rewritten with the earlier frames "
        "first, and image.png, config.yaml and state.pt are replaced atomically.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (it holds state.pt)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="changes allowed on resume: " + ", ".join(RESUMABLE_KEYS))
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    parser.add_argument("-v", "--verbose", action="store_true", help="log model loading and details")
    args = parser.parse_args(argv)
    _setup_logging(args.quiet, args.verbose)
    from vqclip.resume import resume

    return _report(resume(args.run_dir, args.overrides, progress=not args.quiet))


def _run_models(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="vqclip models", description="List named VQGAN models and what is cached.")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: $VQCLIP_CACHE or the user cache)")
    args = parser.parse_args(argv)
    from vqclip.registry import format_model_table

    print(format_model_table(args.cache_dir))
    return 0


def _run_download(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="vqclip download", description="Fetch named VQGAN models into the cache.")
    parser.add_argument("names", nargs="+", metavar="NAME", help="registry names (see 'vqclip models')")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: $VQCLIP_CACHE or the user cache)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    _setup_logging(args.quiet, False)
    from vqclip.registry import ensure_model

    for name in args.names:
        config, checkpoint = ensure_model(name, args.cache_dir, progress=not args.quiet)
        print(f"{name}: {config} {checkpoint}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `vqclip` and `python -m vqclip`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"models": _run_models, "download": _run_download, "resume": _run_resume}
    try:
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return _run_generate(argv)
    except VQClipError as exc:
        print(f"vqclip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vqclip: interrupted", file=sys.stderr)
        return 130
