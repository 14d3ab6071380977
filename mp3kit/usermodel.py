"""A student's own network as a model: an nn.Module class, or a function that returns a module, with its code.

TrainConfig.model takes the class itself (built with num_classes=20 when its __init__ takes that argument, else with
no arguments) or a zero-argument callable such as `lambda: Classifier(bn=False)`. UserModel wraps it with what
identifies the network on disk: the source of the student's classes it is built from (the class, its own base
classes and every module class of the student's inside it), the callable's source and the values it uses, and the
built module's repr. Its digest, a hash of those with comments, blank lines and spacing ignored, is the network's
part of a run's identity: editing the class or the callable's arguments makes a new run, and the same code run
again reuses the finished one. A run read back from disk keeps that record but not the class, so building its
network again needs the class (UserModel.build says so in one sentence).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import json
import linecache
import re
import textwrap
import tokenize
import types

import torch
from torch import nn

from mp3kit.util import UserError

RECORD_KEY = "module"  # a config.json "model" that is a dict with this key is a UserModel's record
_PLAIN = (bool, int, float, str, type(None))
_LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}


def is_user_model(value) -> bool:
    """Return True when value is a network given as code: an nn.Module class or another callable (not a name or spec)."""
    if isinstance(value, UserModel):
        return True
    if isinstance(value, type):
        return issubclass(value, nn.Module)
    return callable(value) and not isinstance(value, (nn.Module, str, dict))


def is_record(value) -> bool:
    """Return True when value is a UserModel's record as config.json holds it."""
    return isinstance(value, dict) and RECORD_KEY in value


def as_user_model(value) -> UserModel:
    """Return value (a class, a callable, a UserModel or its record) as a UserModel; refuse a module instance."""
    if isinstance(value, UserModel):
        return value
    if is_record(value):
        return UserModel.from_record(value)
    if isinstance(value, nn.Module):
        name = type(value).__name__
        raise UserError(f"TrainConfig.model got a {name} object: pass the class itself (model={name}) or a function "
                        f"that builds one (model=lambda: {name}(...)), so that every run starts from fresh weights.")
    if isinstance(value, type) and not issubclass(value, nn.Module):
        raise UserError(f"TrainConfig.model got the class {value.__name__}, which is not an nn.Module: write "
                        f"`class {value.__name__}(nn.Module)`.")
    return UserModel.from_builder(value)


def _wants_num_classes(cls: type) -> bool:
    try:
        return "num_classes" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _call(builder, num_classes: int) -> nn.Module:
    """Build a module from a class (with num_classes when its __init__ takes it) or a zero-argument callable."""
    if isinstance(builder, type):
        module = builder(num_classes=num_classes) if _wants_num_classes(builder) else builder()
    else:
        module = builder()
    if not isinstance(module, nn.Module):
        raise UserError(f"{_builder_name(builder)}() returned a {type(module).__name__}, not an nn.Module: make it "
                        f"return your network, e.g. lambda: Classifier().")
    return module


def _builder_name(builder) -> str:
    if isinstance(builder, functools.partial):
        return f"functools.partial({_builder_name(builder.func)}, ...)"
    return getattr(builder, "__qualname__", None) or type(builder).__name__


def class_source(cls: type) -> str | None:
    """Return the source of a class, also for one defined in a Jupyter cell (which has no file), or None."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        pass
    # A notebook cell's code lives in linecache under the file name its functions' code objects carry.
    header = re.compile(rf"^\s*class\s+{re.escape(cls.__name__)}\b")
    for value in vars(cls).values():
        function = getattr(value, "__func__", getattr(value, "fget", value))
        code = getattr(function, "__code__", None)
        if code is None:
            continue
        lines = linecache.getlines(code.co_filename)
        for start in range(min(code.co_firstlineno, len(lines)) - 1, -1, -1):  # up from the method to its class line
            if header.match(lines[start]):
                return "".join(inspect.getblock(lines[start:]))
    return None


def _callable_source(builder) -> str | None:
    """Return the source of a callable that builds a network: a lambda's own text, a function's definition."""
    if isinstance(builder, functools.partial):
        inner = _callable_source(builder.func) if not isinstance(builder.func, type) else builder.func.__qualname__
        return f"functools.partial({inner}, *{builder.args!r}, **{builder.keywords!r})"
    if getattr(builder, "__name__", "") == "<lambda>":
        text = _lambda_text(builder.__code__)
        if text:
            return text
    try:
        return textwrap.dedent(inspect.getsource(builder)).strip()
    except (OSError, TypeError):
        return None


def _lambda_text(code: types.CodeType) -> str | None:
    """Return "lambda: <body>" cut from its line by the code's column positions (Python 3.11+), or None."""
    lines = linecache.getlines(code.co_filename)
    # Zero-width positions belong to the frame's set-up, not to the lambda's expression.
    spans = [p for p in getattr(code, "co_positions", lambda: ())() if None not in p and (p[0], p[2]) != (p[1], p[3])]
    if not lines or not spans:
        return None
    (first, start), (last, end) = min((p[0], p[2]) for p in spans), max((p[1], p[3]) for p in spans)
    body = lines[first - 1][start:end] if first == last else (
        lines[first - 1][start:] + "".join(lines[first:last - 1]) + lines[last - 1][:end])
    return "lambda: " + " ".join(body.split())


def _normalised(source: str) -> str:
    """Return source as its tokens, comments, blank lines and spacing left out (indentation kept as tokens)."""
    try:
        tokens = tokenize.generate_tokens(io.StringIO(textwrap.dedent(source)).readline)
        return " ".join(t.string if t.type not in (tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE) else
                        tokenize.tok_name[t.type] for t in tokens if t.type not in _LAYOUT)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return source


def code_digest(code: dict) -> str:
    """Return a digest of classes' sources ({qualified name: source}), comments, blank lines and spacing aside."""
    normalised = {name: _normalised(source) if source else None for name, source in code.items()}
    return hashlib.sha1(json.dumps(normalised, sort_keys=True).encode()).hexdigest()[:12]


def _plain(value):
    """Return value when it is plain data (numbers, strings, their lists, tuples and dicts), else its type's name."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return f"<{getattr(value, '__qualname__', type(value).__name__)}>"


def _constants(code: types.CodeType) -> list:
    """Return the constants and names a code object uses, with those of the code nested in it."""
    out = [list(code.co_names)]
    for const in code.co_consts:
        out.append(_constants(const) if isinstance(const, types.CodeType) else _plain(const))
    return out


def _callable_values(builder) -> dict:
    """Return what a callable's result depends on besides its source: its constants, closure and plain globals."""
    if isinstance(builder, functools.partial):
        return {"func": _callable_values(builder.func) if not isinstance(builder.func, type) else builder.func.__qualname__,
                "args": _plain(list(builder.args)), "keywords": _plain(builder.keywords)}
    function = getattr(builder, "__func__", builder)
    code = getattr(function, "__code__", None)
    if code is None:
        return {"object": repr(builder)}
    try:
        found = inspect.getclosurevars(function)
        variables = {**found.globals, **found.nonlocals}
    except (TypeError, ValueError):
        variables = {}
    return {"constants": _constants(code), "variables": {k: _plain(v) for k, v in sorted(variables.items())}}


def _own_classes(cls: type, module: nn.Module) -> list[type]:
    """Return the student's classes a network is made of: cls, its bases and its submodules' classes beyond torch's."""
    found: list[type] = []
    for candidate in [*cls.__mro__, *(type(m) for m in module.modules())]:
        home = getattr(candidate, "__module__", "") or ""
        if candidate is object or home.split(".")[0] in ("torch", "torchvision", "mp3kit") or candidate in found:
            continue
        found.append(candidate)
    return found


class UserModel:
    """A network given as code (see the module docstring): build() makes it, to_dict() is its record in config.json."""

    def __init__(self, builder, record: dict):
        self.builder = builder  # the class or callable; None for a run read back from disk
        self.record = record

    @classmethod
    def from_builder(cls, builder) -> UserModel:
        """Wrap a class or zero-argument callable, building it once (on the meta device where it can) to record it."""
        try:
            with torch.device("meta"):  # no memory, no initialisation: only the layers are wanted here
                module = _call(builder, 20)
        except UserError:
            raise
        except Exception:  # code that needs real tensors to build (e.g. .item()): build it for real
            module = _call(builder, 20)
        classes = _own_classes(type(module), module)
        code = {c.__qualname__: class_source(c) for c in classes}
        unread = [name for name, source in code.items() if source is None]
        record = {
            RECORD_KEY: type(module).__name__,
            "code": code,
            "builder": None if isinstance(builder, type) else _callable_source(builder) or _builder_name(builder),
            "repr": repr(module),
            "note": (f"The source of {', '.join(unread)} could not be read (defined outside a notebook cell or a .py "
                     f"file): its run is identified by its layers (repr) and the rest of its code, so a change to "
                     f"its forward alone is not noticed." if unread else None),
        }
        identity = {
            "code": {name: _normalised(source) if source else None for name, source in code.items()},
            # A callable counts by the names, constants and values it uses, not by its text: a row's label on the
            # same line, or a comment, does not make a new network.
            "builder": None if isinstance(builder, type) else _callable_values(builder),
            "repr": record["repr"],
        }
        record["digest"] = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
        if record["note"]:
            print(f"mp3kit: {record['note']}")
        return cls(builder, record)

    @classmethod
    def from_record(cls, record: dict) -> UserModel:
        """Return the UserModel a run's config.json recorded: its code and digest, with no class to build it."""
        return cls(None, dict(record))

    @property
    def name(self) -> str:
        return str(self.record[RECORD_KEY])

    @property
    def digest(self) -> str:
        return str(self.record.get("digest"))

    @property
    def code_digest(self) -> str:
        """Return a digest of the network's class code alone (comments and spacing aside), whatever its arguments."""
        return code_digest(self.record.get("code", {}))

    @property
    def code(self) -> str:
        """Return the recorded source of the network's classes (and the callable that builds it), as one text."""
        parts = [source.rstrip() for source in self.record.get("code", {}).values() if source]
        if self.record.get("builder"):
            parts.append(f"# built by\n{self.record['builder']}")
        return "\n\n".join(parts)

    def build(self, num_classes: int = 20) -> nn.Module:
        """Return a new module with fresh weights; a UserError when only the record is here (a run read from disk)."""
        if self.builder is None:
            raise UserError(f"This run's network is your own {self.name} (its code is in the run's config.json): "
                            f"run the cell that defines {self.name} again and pass it as the model (e.g. "
                            f"model={self.name}) to resume it, reuse it or load its weights.")
        return _call(self.builder, num_classes)

    def to_dict(self) -> dict:
        """Return the record config.json keeps: class name, code, callable source, repr and digest."""
        return dict(self.record)

    def identity(self) -> dict:
        """Return what a run's identity keeps of the network: its name and digest."""
        return {RECORD_KEY: self.name, "digest": self.digest}

    def __eq__(self, other) -> bool:
        return isinstance(other, UserModel) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"UserModel({self.name}, digest {self.digest}{'' if self.builder else ', record only'})"
