"""Command line: convert a released score_sde_pytorch checkpoint into a run of this codebase.

    python -m sde.convert score_sde SRC.pth config=vp/cifar10_ddpmpp_continuous out=DIR [K=V ...]
    python -m sde.convert score_sde --list

`config=` is a released config name (see `--list`) or a JSON file with score_sde's `training`,
`data` and `model` sections. Further `KEY=VALUE` are Hydra overrides of the run's config (for
example `data.root=/data/cifar10`). Then: `python -m sde.sample run=DIR`,
`python -m sde.evaluate run=DIR`.
"""

from __future__ import annotations

import sys

from sde.runs.env import EXIT_USER_ERROR, USER_ERRORS

USAGE = ("usage: python -m sde.convert score_sde SRC.pth config=NAME_OR_JSON out=DIR "
         "[KEY=VALUE ...]\n       python -m sde.convert score_sde --list")


def parse_args(argv: list[str]) -> dict:
    """{'src', 'config', 'out', 'overrides'} from the command line; a ValueError on misuse."""
    if not argv or argv[0] != "score_sde":
        raise ValueError("the only source format is score_sde (yang-song/score_sde_pytorch)")
    paths = [a for a in argv[1:] if "=" not in a]
    keys = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    if len(paths) != 1:
        raise ValueError(f"expected one source checkpoint SRC.pth, got {paths or 'none'}")
    missing = [k for k in ("config", "out") if not keys.get(k)]
    if missing:
        raise ValueError(f"missing {' and '.join(k + '=' for k in missing)}")
    config, out = keys.pop("config"), keys.pop("out")
    return {"src": paths[0], "config": config, "out": out,
            "overrides": [f"{k}={v}" for k, v in keys.items()]}


def main(argv: list[str] | None = None) -> int:
    """Run the converter; prints the checkpoint written, or the error and the usage (exit 2)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[1:2] == ["--list"]:
        from sde.convert.released import RELEASED

        for name, entry in RELEASED.items():
            print(f"{name:38s} experiment={entry.experiment} {' '.join(entry.overrides)}".rstrip())
        return 0
    try:
        args = parse_args(argv)
        from sde.convert.export import convert_run

        path = convert_run(args["src"], args["config"], args["out"], args["overrides"])
    except USER_ERRORS as e:  # the one policy of every entry point (sde.runs.env)
        print(f"sde.convert: error: {e}\n{USAGE}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"wrote {path}\nnext: python -m sde.sample run={args['out']}  |  "
          f"python -m sde.evaluate run={args['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
