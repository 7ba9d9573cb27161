"""Command-line checks shared by sample, eval, train and profile.

Each runs before any slow work (loading the model, sampling, training) and fails with a CliError: one line
that names the problem and the fix, printed as ``error: ...`` with exit code 2 for a bad command line (as
argparse does) and 1 for anything else (a missing or broken file).
"""

import math
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILURE = 1
# minisd follows prompts best at 1.5 and falls apart above ~3 (minisd/pipeline.py); far beyond, float32
# overflows: guidance 1e39 turned every pixel black.
MAX_GUIDANCE = 100.0


class CliError(Exception):
    """A problem to report in one line, without a traceback."""

    def __init__(self, message, code=EXIT_FAILURE):
        super().__init__(message)
        self.code = code

    def exit(self):
        print(f"error: {self}", file=sys.stderr)
        sys.exit(self.code)


def option(name):
    return "--" + name.replace("_", "-")


def int_range(name, value, low=1, high=None, why=""):
    """--name is an int in [low, high]; ``why`` explains the upper bound."""
    if value < low:
        raise CliError(f"{option(name)} must be at least {low}, got {value}", EXIT_USAGE)
    if high is not None and value > high:
        raise CliError(f"{option(name)} must be at most {high}{why}, got {value}", EXIT_USAGE)


def number_range(name, value, low, high=math.inf, low_open=False):
    """--name is a finite number from low (excluded with low_open) to high."""
    if not (math.isfinite(value) and (low < value if low_open else low <= value) and value <= high):
        bound = f"{'>' if low_open else '>='} {low:g}"
        if high < math.inf:
            bound = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise CliError(f"{option(name)} must be a finite number {bound}, got {value:g}", EXIT_USAGE)


def guidance(value, name="guidance"):
    if not (math.isfinite(value) and 0 <= value <= MAX_GUIDANCE):
        raise CliError(
            f"{option(name)} must be a number from 0 to {MAX_GUIDANCE:g}, got {value:g} (minisd follows its "
            "prompts best at 1.5; 0 ignores the prompt)",
            EXIT_USAGE,
        )


def backend(name):
    """A backend this machine can run the whole model on (the simulator cannot: minisd.mode says why)."""
    import minisd.mode as mode

    try:
        name = name or mode.default_backend()
        mode.check_backend(name, whole_model=True)
    except (ValueError, RuntimeError) as err:
        raise CliError(str(err), EXIT_USAGE) from None
    return name


def out_file(out, suffix, name="out"):
    """A file we can create (the option --name): its folder exists (a typo should not silently make new
    folders) and takes new files now, rather than after minutes of sampling."""
    from minisd.files import check_writable

    flag, out = option(name), Path(out)
    if out.suffix.lower() != suffix:
        raise CliError(f"{flag} must name a {suffix} file, got {str(out)!r}", EXIT_USAGE)
    if out.is_dir():
        raise CliError(f"{flag} {out} is a folder; name a {suffix} file in it", EXIT_USAGE)
    if not out.parent.is_dir():
        raise CliError(f"{flag} {out}: the folder {out.parent} does not exist", EXIT_USAGE)
    try:
        check_writable(out.parent)
    except OSError as err:
        raise CliError(
            f"{flag} {out}: cannot create files in {out.parent} ({err.strerror}); choose another folder",
            EXIT_USAGE,
        ) from None
    return out


def weights_config(path):
    """The config of the --weights file, read from its header (cheap): refuses an empty, missing or broken
    path before anything is loaded."""
    from minisd.weights import WeightsError, peek_config

    if path == "":
        raise CliError(
            "--weights is empty: give a .safetensors file, or leave --weights out for the shipped one",
            EXIT_USAGE,
        )
    try:
        return peek_config(path)
    except WeightsError as err:
        raise CliError(str(err)) from None


def steps(value, config):
    most = config["scheduler"]["num_train_timesteps"]
    int_range("steps", value, high=most, why=", the timesteps this model was trained on")


def plural(n, word):
    return f"{n} {word}{'s' * (n != 1)}"
