"""`fsdx`: one subcommand per pipeline stage; each maps onto an importable, typed stage function.

Options are made from the stage function's signature (name -> --kebab-case, type, default) and its help
from the docstring's Args section, so the CLI and the Python API cannot drift apart. Expected failures
(bad layout, bad input, bad settings) print one line and exit with code 2 (FSDX_DEBUG=1 shows the
traceback instead); nothing here does real work. A float option must be finite, an int option within
int64, and the generation settings within their ranges, all before the stage starts.

What a command writes (its --out) is checked writable, with space free, and is held by this run for as long as
it runs, before the stage starts; a write the machine refuses (full, read-only) is one line and exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import math
import os
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

USAGE_ERROR = 2
STORAGE_ERROR = 1  # the machine refused a write: not the command line's fault
INT64 = (-2**63, 2**63 - 1)  # what an int option may hold: torch, numpy and SQLite all stop here
OVERRIDES = "overrides"  # a stage parameter of this name takes any other `--key value` as config overrides
SETTING_TEXT = "setting_text__"  # argparse dest prefix of config settings given as text (lists, mappings)
OVERRIDES_EPILOG = "Any other field of the run's config can be set as --field value (e.g. --snr-gamma 5)."


class CommandError(Exception):
    """An expected failure of a stage; the CLI prints its one-line message and exits with code 2."""


@dataclass(frozen=True)
class Command:
    """A subcommand: the stage function, which of its parameters are positional, and how to show the result."""

    name: str  # words after fsdx, e.g. "data build"
    target: str  # "module:function", imported only when this command runs or shows its help
    summary: str  # one line for `fsdx --help` (the full help is the function's docstring)
    positional: tuple[str, ...] = ()  # parameters given without a flag
    show: str = ""  # "module:function" printing the result and returning the exit code
    check: str = ""  # "module:function" refusing bad arguments before the stage starts (for stages that don't)
    settings: str = ""  # "module:Class": a config dataclass whose every field is also an option (typed, with help)
    outputs: tuple[str, ...] = ("out",)  # parameters naming a folder or file this command writes: held while it runs

    def function(self) -> Callable[..., Any]:
        return _resolve(self.target)


COMMANDS = (
    Command("sketch", "fashionsd_x.data.sketch:sketch_files", "extract sketches from garment images",
            ("paths",), "fashionsd_x.cli_show:sketch"),
    Command("data build", "fashionsd_x.data.build:build_dataset",
            "build a sketch-augmented Hugging Face dataset from garment photos", (), "fashionsd_x.cli_show:data_build"),
    Command("data synth", "fashionsd_x.data.synth:synthesize", "generate synthetic flat-lay garments with captions",
            (), "fashionsd_x.cli_show:data_synth"),
    Command("data sketch-styles", "fashionsd_x.data.sketch_styles:make_sketch_styles",
            "write the sketch-style benchmark (designers' sketches and pages of eleven kinds) for fsdx evaluate", (),
            "fashionsd_x.cli_show:data_sketch_styles"),
    Command("train lora", "fashionsd_x.train.lora:train_lora", "fine-tune a Stable Diffusion base with LoRA", (),
            "fashionsd_x.cli_show:train", settings="fashionsd_x.train.config:LoraTrainConfig"),
    Command("train controlnet", "fashionsd_x.train.controlnet:train_controlnet",
            "train a ControlNet on the dataset's sketches", (), "fashionsd_x.cli_show:train",
            settings="fashionsd_x.train.config:ControlNetTrainConfig"),
    Command("train base", "fashionsd_x.train.pretrain:train_base",
            "train a base's UNet and text encoder in full (from scratch or a full fine-tune)", (),
            "fashionsd_x.cli_show:train", settings="fashionsd_x.train.config:BaseTrainConfig"),
    Command("train tiny", "fashionsd_x.recipes.tiny:train_tiny",
            "train the embedded tiny model from nothing (resumable; --ship installs it)", (),
            "fashionsd_x.cli_show:train_tiny"),
    Command("generate", "fashionsd_x.generate:generate", "generate garments from a prompt and a sketch", (),
            "fashionsd_x.cli_show:generate", "fashionsd_x.cli:check_generation_settings"),
    Command("evaluate", "fashionsd_x.evaluate.protocol:evaluate",
            "evaluate vanilla SD, LoRA and LoRA + ControlNet with the paper's metrics", (),
            "fashionsd_x.cli_show:evaluate", "fashionsd_x.cli:check_generation_settings"),
    Command("ablate", "fashionsd_x.recipes.ablate:ablate",
            "train and evaluate on nested subsets of the data: how results grow with data size and diversity", (),
            "fashionsd_x.recipes.ablate:show"),
    Command("studio", "fashionsd_x.apps.studio:serve_studio", "serve FashionSD-X Studio, the designers' web app",
            (), "fashionsd_x.apps.studio:show"),
    Command("study create", "fashionsd_x.apps.study.create:create_study",
            "build a blind pairwise user study from an evaluation's images", (), "fashionsd_x.apps.study.create:show"),
    Command("study serve", "fashionsd_x.apps.study.server:serve_study", "serve a user study to raters", ("db",),
            "fashionsd_x.apps.study.server:show", outputs=()),  # SQLite keeps its own file consistent
    Command("study analyze", "fashionsd_x.apps.study.analyze:analyze_study",
            "win rates, confidence intervals, tests and agreement of a user study", ("db",),
            "fashionsd_x.apps.study.analyze:show"),
    Command("export", "fashionsd_x.models.export:export_model",
            "write a base, LoRA or ControlNet as the single file A1111, ComfyUI and kohya load", (),
            "fashionsd_x.cli_show:export"),
    Command("demo", "fashionsd_x.recipes.demo:run_demo", "run the main job on the embedded default", (),
            "fashionsd_x.cli_show:demo", "fashionsd_x.cli:check_generation_settings"),
)

# Options whose spelling on the command line differs from the parameter name.
FLAG_NAMES = {"num": "--num", "sketch_method": "--sketch-method", "evaluation": "--from"}
# List options given once per item (`--sweep a=1,2 --sweep b=3`): each value is itself a list, so a space-separated
# run of values would read as one setting's.
REPEATED = {"sweep", "allow_host"}


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, attribute = target.partition(":")
    module = __import__(module_name, fromlist=[attribute])
    return getattr(module, attribute)


def select_command(argv: Sequence[str]) -> Command | None:
    """The command named by the leading words of argv (longest match), if any."""
    words = []
    for token in argv:
        if token.startswith("-"):
            break
        words.append(token)
    matches = [c for c in COMMANDS if c.name.split() == words[: len(c.name.split())]]
    return max(matches, key=lambda c: len(c.name.split()), default=None)


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error style: a bad option is one line and exit code 2 (the usage is in --help)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def finite_float(text: str) -> float:
    """A float option's value: NaN and infinity are refused here, so no stage ever sees them."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def whole_number(text: str) -> int:
    """An int option's value (its range is checked once parsing is done, see `_check_int64`)."""
    try:
        return int(text)
    except ValueError:  # also a string of more digits than Python converts
        shown = text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"
        raise argparse.ArgumentTypeError(f"expected a whole number, got {shown!r}") from None


def boolean(text: str) -> bool:
    """A boolean option's value: true/false, yes/no, on/off or 1/0."""
    value = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False,
             "0": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


NUMBER_TYPES = {float: finite_float, int: whole_number}  # how an option of a stage parameter's type is parsed


def _check_int64(kwargs: dict[str, Any]) -> None:
    """Every int option within int64, after the stage's own check has had its say (it names the finer range)."""
    for name, value in kwargs.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and not isinstance(item, bool) and not INT64[0] <= item <= INT64[1]:
                shown = str(item) if abs(item) < 10**40 else f"a number of {len(str(abs(item)))} digits"
                raise CommandError(f"{_flag(name)} must be a whole number from -2^63 to 2^63-1, got {shown}")


def check_generation_settings(**kwargs: Any) -> None:
    """Refuse the generation numbers of a stage before it opens a dataset or loads a model (generate checks them
    again, for Python callers; evaluate and demo pass them on): the ranges of
    `fashionsd_x.generate.check_settings`, and --limit >= 1."""
    from fashionsd_x.generate import SETTINGS_RANGES, check_settings

    given = {("num_images" if name == "n" else name): value for name, value in kwargs.items()}  # generate's --n
    check_settings(**{name: value for name, value in given.items() if name in SETTINGS_RANGES})
    if kwargs.get("limit") is not None and kwargs["limit"] < 1:
        raise CommandError(f"--limit must be at least 1, got {kwargs['limit']}")


def build_parser(selected: Command | None = None) -> argparse.ArgumentParser:
    """The `fsdx` parser; only the selected command's stage module is imported (keeps --help fast)."""
    parser = Parser(prog="fsdx", description=_package_doc())
    parser.add_argument("--version", action="version", version=f"fsdx {_version()}")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the libraries' own notices, warnings and progress bars (anywhere on the line)")
    groups: dict[str, argparse._SubParsersAction] = {"": parser.add_subparsers(dest="command", metavar="COMMAND")}
    for command in COMMANDS:
        *parents, leaf = command.name.split()
        prefix = ""
        for parent in parents:
            key = f"{prefix} {parent}".strip()
            if key not in groups:
                group_parser = groups[prefix].add_parser(parent, help=f"{parent} stage commands")
                groups[key] = group_parser.add_subparsers(dest=f"{key}_command", metavar="COMMAND")
            prefix = key
        if command != selected:
            groups[prefix].add_parser(leaf, help=command.summary)
            continue
        function = command.function()
        _, description, arg_help = _parse_docstring(function.__doc__ or "")
        epilog = OVERRIDES_EPILOG if OVERRIDES in inspect.signature(function).parameters else None
        sub = groups[prefix].add_parser(leaf, help=command.summary, description=description, epilog=epilog,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_parameters(sub, function, command.positional, arg_help)
        if command.settings:
            _add_settings(sub.add_argument_group("settings (any field of the run's config)"),
                          _resolve(command.settings), function)
        sub.set_defaults(_command=command)
    return parser


def _add_parameters(parser: argparse.ArgumentParser, function: Callable, positional: Sequence[str],
                    arg_help: dict[str, str]) -> None:
    hints = typing.get_type_hints(function)
    for name, parameter in inspect.signature(function).parameters.items():
        if name == OVERRIDES or parameter.kind is inspect.Parameter.VAR_KEYWORD:
            continue  # overrides: the leftover --key value pairs (see _overrides); **settings: see _add_settings
        kind, is_list, choices = _describe(hints.get(name, str))
        help_text = arg_help.get(name, "")
        required = parameter.default is inspect.Parameter.empty
        if kind is bool:
            parser.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction,
                                default=False if required else parameter.default, help=help_text)
            continue
        options: dict[str, Any] = {"type": NUMBER_TYPES.get(kind, kind), "help": help_text, "choices": choices}
        if is_list and name in REPEATED:
            options["action"] = "append"
        elif is_list:
            options["nargs"] = "+"
        if name in positional:
            parser.add_argument(name, metavar=name.upper().rstrip("S") if is_list else name.upper(), **options)
            continue
        if required:
            options["required"] = True
        else:
            options["default"] = parameter.default
            if parameter.default is not None:  # None means "not given": the stage decides (e.g. from --config)
                options["help"] = f"{help_text} (default: {parameter.default})"
        metavar = None if choices else name.split("_")[-1].upper()  # argparse shows {a,b,c} for choices
        parser.add_argument(_flag(name), dest=name, metavar=metavar, **options)


def _add_settings(group: Any, config_class: type, function: Callable) -> None:
    """One option per field of the stage's config dataclass that is not a parameter of the function: typed
    numbers, --flag/--no-flag for booleans, and lists (comma-separated) or mappings (YAML) as text the config
    parses. Help comes from the field's comment in the class, so each setting is described once."""
    from fashionsd_x.train.config import field_help

    taken = set(inspect.signature(function).parameters)
    helps, hints = field_help(config_class), typing.get_type_hints(config_class)
    for item in dataclasses.fields(config_class):
        if item.name in taken:
            continue
        kind, is_list, _ = _describe(hints[item.name])
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        help_text = f"{helps.get(item.name, '')} (default: {default})".replace("%", "%%")  # argparse formats help
        if kind is bool and not is_list:  # --flag, --flag true|false (as before these options), --no-flag
            group.add_argument(_flag(item.name), dest=item.name, nargs="?", const=True, default=None,
                               type=boolean, metavar="true|false", help=help_text)
            group.add_argument("--no-" + _flag(item.name)[2:], dest=item.name, action="store_false",
                               help=argparse.SUPPRESS)
        elif kind in (int, float, str, Path) and not is_list and not _is_mapping(hints[item.name]):
            group.add_argument(_flag(item.name), dest=item.name, type=NUMBER_TYPES.get(kind, kind), default=None,
                               metavar=item.name.split("_")[-1].upper(), help=help_text)
        else:  # lists and mappings: text the config parses (YAML; a list also as a,b,c)
            group.add_argument(_flag(item.name), dest=SETTING_TEXT + item.name, default=None, metavar="YAML",
                               help=help_text)


def _is_mapping(hint: Any) -> bool:
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any(typing.get_origin(member) is dict or member is dict for member in members)


def _overrides(extra: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    """`--key value` / `--key=value` pairs left over by argparse -> {"key": "value"} config overrides."""
    pairs: dict[str, str] = {}
    tokens = list(extra)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or len(token) < 3:
            parser.error(f"expected --key value config overrides, got {token!r}")
        key, equals, value = token[2:].partition("=")
        if not equals:
            if not tokens or tokens[0].startswith("--"):
                parser.error(f"config override --{key} needs a value")
            value = tokens.pop(0)
        pairs[key.replace("-", "_")] = value
    return pairs


def _flag(name: str) -> str:
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def _describe(hint: Any) -> tuple[Any, bool, list | None]:
    """(element type, is a list, choices) of a parameter annotation such as `list[Path] | None`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _describe(members[0])
    if origin is typing.Literal:
        values = list(typing.get_args(hint))
        return type(values[0]), False, values
    if origin in (list, tuple, Sequence) or (origin is not None and issubclass(origin, Sequence)):
        kind, _, choices = _describe(typing.get_args(hint)[0])
        return kind, True, choices
    return (hint if hint in (int, float, str, bool, Path) else str), False, None


def _parse_docstring(doc: str) -> tuple[str, str, dict[str, str]]:
    """Summary line, description (without Args) and per-argument help from a Google-style docstring."""
    lines = inspect.cleandoc(doc).splitlines() or [""]
    arg_help: dict[str, str] = {}
    body: list[str] = []
    current = None
    in_args = False
    for line in lines[1:]:
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:"):
            in_args = True
            continue
        if in_args and stripped.endswith(":") and not line.startswith(" "):
            in_args = False
        if not in_args:
            body.append(line)
        elif line.startswith("    ") and not line.startswith("        ") and ":" in stripped:
            current, _, text = stripped.partition(":")
            current = current.split(" ")[0]
            arg_help[current] = text.strip()
        elif current and stripped:
            arg_help[current] += " " + stripped
    return lines[0], "\n".join([lines[0], *body]).strip(), arg_help


def _package_doc() -> str:
    return ("FashionSD-X: multimodal fashion garment synthesis with latent diffusion (sketch + text -> garment). "
            "Run `fsdx COMMAND --help` for a stage's options.")


def _version() -> str:
    from fashionsd_x import __version__
    return __version__


VERBOSE_FLAGS = ("--verbose",)  # anywhere on the line: the libraries' own logs, warnings and progress bars too


def quiet_libraries() -> None:
    """Silence the libraries' notices, warnings and loading bars (diffusers, transformers, huggingface_hub,
    datasets, accelerate, peft), so a user sees the project's own progress and results; errors still show."""
    import logging
    import warnings

    import datasets
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils
    import transformers.utils.logging as transformers_logging

    for library in ("diffusers", "transformers", "huggingface_hub", "datasets", "accelerate", "peft", "torch"):
        logging.getLogger(library).setLevel(logging.ERROR)
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    datasets.disable_progress_bars()
    for module in ("diffusers", "transformers", "huggingface_hub", "datasets", "accelerate", "peft", "torch"):
        warnings.filterwarnings("ignore", module=module)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run the stage function, show its result; expected errors become one line and exit code 2.

    Third-party notices and loading bars are hidden unless --verbose (anywhere on the line) or FSDX_DEBUG=1.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(flag in argv for flag in VERBOSE_FLAGS) or bool(os.environ.get("FSDX_DEBUG"))
    argv = [token for token in argv if token not in VERBOSE_FLAGS]
    parser = build_parser(select_command(argv))
    namespace, extra = parser.parse_known_args(argv)
    args = vars(namespace)
    args.pop("verbose", None)  # taken from argv above, wherever it stood
    command: Command | None = args.pop("_command", None)
    if command is None:
        parser.print_help()
        return USAGE_ERROR
    kwargs = {key: value for key, value in args.items()
              if not key.endswith("command") and not key.startswith(SETTING_TEXT)}
    if OVERRIDES in inspect.signature(command.function()).parameters:
        kwargs[OVERRIDES] = {**_overrides(extra, parser),
                             **{key.removeprefix(SETTING_TEXT): value for key, value in args.items()
                                if key.startswith(SETTING_TEXT) and value is not None}}
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not verbose:
        quiet_libraries()
    outputs = [Path(kwargs[name]) for name in command.outputs if kwargs.get(name) is not None]
    try:
        if command.check:
            _resolve(command.check)(**kwargs)
        _check_int64(kwargs)
        # Only the first machine of a multi-machine launch holds the output and reports; the others write through it.
        first_machine = not kwargs.get("machine_rank")
        with _held(outputs if first_machine else [], f"fsdx {command.name}"), _notices_shown(command.name), \
                _thread_storage_errors() as refused:
            result = command.function()(**kwargs)
            code = int(_resolve(command.show)(result) or 0) if command.show and first_machine else 0
        if refused:  # a writer thread (TensorBoard's) could not write: the run's record is not whole
            raise refused[0]
        return code
    except KeyboardInterrupt:
        print("fsdx: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - only the known user-facing kinds are turned into one line
        from fashionsd_x.files import storage_problem

        if os.environ.get("FSDX_DEBUG"):
            raise
        if problem := storage_problem(error, outputs[0] if outputs else None):
            print(f"fsdx {command.name}: error: {problem}", file=sys.stderr)
            return STORAGE_ERROR
        if not _is_user_error(error):
            raise
        print(f"fsdx {command.name}: error: {_one_line(error)}", file=sys.stderr)
        return USAGE_ERROR


@contextlib.contextmanager
def _held(outputs: list[Path], holder: str) -> typing.Iterator[None]:
    """Check each output writable with space free, then hold it for this run (by the first process of a
    multi-process launch only: the others write through it)."""
    from fashionsd_x.files import check_writable, claim, nearest_folder

    with contextlib.ExitStack() as stack:
        if int(os.environ.get("RANK", "0")) == 0:
            for output in outputs:
                check_writable(nearest_folder(output) or Path.cwd())  # nothing is created here
                stack.enter_context(claim(output, holder))
        yield


@contextlib.contextmanager
def _notices_shown(name: str) -> typing.Iterator[None]:
    """Print each of the project's notices once, as `fsdx NAME: warning: ...` (not Python's warning format)."""
    import warnings

    from fashionsd_x.notices import Notice

    shown: set[str] = set()

    def show(message, category, *_: Any, **__: Any) -> None:
        if issubclass(category, Notice) and str(message) not in shown:
            shown.add(str(message))
            print(f"fsdx {name}: warning: {_one_line(message)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", Notice)
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _thread_storage_errors() -> typing.Iterator[list[BaseException]]:
    """Collect the writes a background thread had refused (a full disk under TensorBoard's event writer) instead
    of letting the thread print its traceback; other thread errors are shown as Python shows them."""
    import threading

    from fashionsd_x.files import storage_problem

    refused: list[BaseException] = []
    shown = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and storage_problem(args.exc_value):
            refused.append(args.exc_value)
        else:
            shown(args)

    threading.excepthook = hook
    try:
        yield refused
    finally:
        threading.excepthook = shown


def _is_user_error(error: Exception) -> bool:
    from fashionsd_x.files import FolderInUseError

    # LayoutError and ImageLoadError are ValueErrors; FileNotFoundError covers a missing input path.
    return isinstance(error, (CommandError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
                              FolderInUseError))


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    raise SystemExit(main())
