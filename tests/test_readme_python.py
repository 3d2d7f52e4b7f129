"""The README's Python blocks against the code, statically: each block parses, its imports exist, and each call of a
dsunet_hf function, class or method accepts the arguments the block gives it (inspect.signature(...).bind_partial).
Nothing is run or downloaded; the variables the blocks use (``model``, ``processor``) are typed from their
assignments, with a small table for what a Hub id or a loader returns."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import re
from pathlib import Path

import pytest
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
OPTIONAL_MODULES = {"onnxruntime"}  # a dev extra: an import the test may skip where it is not installed

# The model class each Hub id / folder of the README's blocks holds (what an Auto class or a loader returns there).
HUB_MODELS = {
    "me/sam2unet-cod": "Sam2UNetForImageSegmentation",
    "me/visual-prompt-head": "VisualPromptForSegmentation",
    "ZhengPeng7/BiRefNet": "BiRefNetForImageSegmentation",
    "ZhengPeng7/BiRefNet_lite": "BiRefNetForImageSegmentation",
}
# Loaders whose return type the signature does not say.
PROCESSOR_LOADERS = {"AutoImageProcessor.from_pretrained", "default_image_processor"}


def python_blocks(text: str = README) -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block."""
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1))
            for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)]


class Instance:
    """A variable known to hold an instance of ``cls``."""

    def __init__(self, cls: type):
        self.cls = cls


def _dsunet_class(name: str) -> type:
    import dsunet_hf

    return getattr(dsunet_hf, name)


def _is_ours(obj) -> bool:
    return (getattr(obj, "__module__", None) or "").startswith("dsunet_hf")


def _first_string(call: ast.Call) -> str | None:
    if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        return call.args[0].value
    return None


def _resolve(node: ast.AST, env: dict, called: bool = True):
    """The object an expression names: a module, class, function, Instance, or None when unknown. A dsunet_hf
    module or class without the attribute fails; so does an instance of ours without the method ``called``
    (an attribute on the way there may be set in ``__init__``: unknown)."""
    if isinstance(node, ast.Name):
        return env.get(node.id)
    if not isinstance(node, ast.Attribute):
        return None
    base = _resolve(node.value, env, called=False)
    owner = base.cls if isinstance(base, Instance) else base
    if owner is None:
        return None
    module = owner.__name__ if inspect.ismodule(owner) else getattr(owner, "__module__", None) or ""
    if inspect.ismodule(owner) and module.startswith("dsunet_hf") and not hasattr(owner, node.attr):
        try:  # a submodule not imported yet (dsunet_hf.app)
            importlib.import_module(f"{module}.{node.attr}")
        except ModuleNotFoundError:
            pass
    if not hasattr(owner, node.attr):
        if not module.startswith("dsunet_hf") or (isinstance(base, Instance) and not called):
            return None  # another library's (lazy) attribute, or an instance attribute: not ours to check
        raise AssertionError(f"{ast.unparse(node)}: {owner!r} has no attribute {node.attr!r}")
    return getattr(owner, node.attr)


def _returns(call: ast.Call, env: dict):
    """What a call assigns: an Instance, a tuple of them (load_model_and_processor), or None when unknown."""
    from dsunet_hf import SegmentationImageProcessor

    func = _resolve(call.func, env)
    name = ast.unparse(call.func)
    if inspect.isclass(func):
        return Instance(func)
    if name.split(".")[-1] in PROCESSOR_LOADERS or name in PROCESSOR_LOADERS:
        return Instance(SegmentationImageProcessor)
    if isinstance(call.func, ast.Attribute) and call.func.attr.startswith("from_pretrained"):
        owner = _resolve(call.func.value, env, called=False)
        if inspect.isclass(owner) and _is_ours(owner):
            return Instance(owner)
        if _first_string(call) in HUB_MODELS:  # an Auto class
            return Instance(_dsunet_class(HUB_MODELS[_first_string(call)]))
    if getattr(func, "__name__", None) == "load_model_and_processor" and _first_string(call) in HUB_MODELS:
        return (Instance(_dsunet_class(HUB_MODELS[_first_string(call)])), Instance(SegmentationImageProcessor))
    return None


def _callable_of(call: ast.Call, env: dict):
    """The dsunet_hf callable a call reaches and whether its first parameter (self) is already bound."""
    func = _resolve(call.func, env)
    if isinstance(call.func, ast.Attribute):
        owner = _resolve(call.func.value, env, called=False)
        if isinstance(owner, Instance):  # a method looked up on the class: self is not bound
            static = inspect.getattr_static(owner.cls, call.func.attr)
            return (func, isinstance(static, (staticmethod, classmethod))) if _is_ours(owner.cls) else (None, True)
    if isinstance(func, Instance):  # model(...) / processor(...)
        if not _is_ours(func.cls):
            return None, True
        return (func.cls.forward if issubclass(func.cls, nn.Module) else func.cls.__call__), False
    if (inspect.isclass(func) or callable(func)) and _is_ours(func):
        return func, True
    return None, True


def signature(func) -> inspect.Signature:
    """A config class takes its own fields and PretrainedConfig's, not any keyword (PretrainedConfig keeps unknown
    ones as attributes: ``Sam2UNetConfig(finetune_strategyy="lora")`` would train adapters, silently)."""
    from transformers import PretrainedConfig

    if not (inspect.isclass(func) and issubclass(func, PretrainedConfig)):
        return inspect.signature(func)
    parameters = {}
    for cls in reversed([cls for cls in func.__mro__ if issubclass(cls, PretrainedConfig)]):
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                parameters[name] = parameter.replace(kind=parameter.KEYWORD_ONLY)
    parameters.setdefault("num_labels", inspect.Parameter("num_labels", inspect.Parameter.KEYWORD_ONLY))  # popped
    return inspect.Signature(list(parameters.values()))


def check_block(code: str, where: str, env: dict | None = None) -> list[str]:
    """Raises AssertionError on an import that fails, a called name never imported or a call its callable refuses;
    returns the calls checked. ``env``: the names earlier blocks defined (the README reads top to bottom), updated."""
    tree = ast.parse(code, where)
    env = {} if env is None else env
    checked = []
    for statement in tree.body:
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            namespace: dict = {}
            try:
                exec(compile(ast.Module([statement], []), where, "exec"), namespace)
            except ImportError as error:
                module = statement.module if isinstance(statement, ast.ImportFrom) else statement.names[0].name
                if module.split(".")[0] in OPTIONAL_MODULES and isinstance(error, ModuleNotFoundError):
                    continue
                raise AssertionError(f"{where}: {ast.unparse(statement)}: {error}") from error
            env.update({name: value for name, value in namespace.items() if name != "__builtins__"})
            continue
        for node in ast.walk(statement):
            if not isinstance(node, ast.Call):
                continue
            root = node.func
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name):
                assert root.id in env or hasattr(builtins, root.id), \
                    f"{where}: {root.id} is not imported (in this block or an earlier one)"
            if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                # A method called on a variable the block assigned but the table cannot type: extend the table.
                assert node.func.value.id not in env or env[node.func.value.id] is not None, \
                    f"{where}: cannot tell what {node.func.value.id} is in {ast.unparse(node)} (a Hub id: add it to " \
                    "HUB_MODELS in tests/test_readme_python.py)"
            func, bound = _callable_of(node, env)
            if func is None:
                continue
            args = []
            for arg in node.args:
                if isinstance(arg, ast.Starred):
                    break  # positions after *args are unknown
                args.append(object())
            kwargs = {keyword.arg: object() for keyword in node.keywords if keyword.arg is not None}
            try:
                signature(func).bind_partial(*([] if bound else [object()]), *args, **kwargs)
            except TypeError as error:
                raise AssertionError(f"{where}: {ast.unparse(node)}: {error}") from error
            checked.append(ast.unparse(node.func))
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Call):
            value = _returns(statement.value, env)
            for target in statement.targets:
                if isinstance(target, ast.Name):
                    env[target.id] = value if not isinstance(value, tuple) else None
                elif isinstance(target, ast.Tuple):
                    values = value if isinstance(value, tuple) else (None,) * len(target.elts)
                    env.update({element.id: item for element, item in zip(target.elts, values)
                                if isinstance(element, ast.Name)})
        elif isinstance(statement, ast.Assign):
            env.update({target.id: None for target in statement.targets if isinstance(target, ast.Name)})
    return checked


BLOCKS = python_blocks()


def checked_calls() -> dict[int, list[str]]:
    """The calls checked in each block (by first line), each block seeing the names of the blocks above it."""
    env: dict = {}
    return {line: check_block(code, f"README.md:{line}", env) for line, code in BLOCKS}


def _models() -> list[type]:
    import dsunet_hf

    return [value for value in map(dsunet_hf.__dict__.get, dsunet_hf.__all__)
            if inspect.isclass(value) and issubclass(value, nn.Module) and hasattr(value, "config_class")]


def inline_calls(text: str = README) -> list[tuple[int, str]]:
    """(line, code) of the prose's `code` spans that are Python calling only what the check can resolve: names
    dsunet_hf exports, ``dsunet_hf.*``, the functions the prose names by module (INLINE_NAMES) and ``model.*``;
    a bare model method (`forward(pixel_values, labels=None)`) is read as ``model.forward(...)``."""
    prose = re.sub(r"^```.*?^```", lambda block: "\n" * block.group().count("\n"), text, flags=re.S | re.M)
    import dsunet_hf

    known = {"dsunet_hf", "model", *dsunet_hf.__all__, *INLINE_NAMES}
    methods = {name for model in _models() for name in dir(model) if not name.startswith("_")} - known
    spans = []
    for match in re.finditer(r"`([^`\n]+)`", prose):
        try:
            tree = ast.parse(match.group(1))
        except SyntaxError:
            continue
        roots = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                root = node.func
                while isinstance(root, (ast.Attribute, ast.Call)):
                    root = root.value if isinstance(root, ast.Attribute) else root.func
                roots.append(root)
        if roots and all(getattr(root, "id", None) in known | methods for root in roots):
            for root in roots:
                if root.id in methods:  # the model's method
                    root.id = f"model.{root.id}"
            spans.append((prose.count("\n", 0, match.start()) + 1, ast.unparse(tree)))
    return spans


# Functions the prose calls by their bare name, and the module it names for them.
INLINE_NAMES = {"predict_with_prompts": "dsunet_hf.prompt_predict", "PromptTracker": "dsunet_hf.prompt_predict",
                "MaskPrompt": "dsunet_hf.prompts", "predict_files": "dsunet_hf.predict"}


def check_inline(code: str, where: str) -> None:
    """``model`` there is any of the package's models: one of them must take the call."""
    import dsunet_hf

    env = {name: getattr(dsunet_hf, name) for name in dsunet_hf.__all__}
    env.update({name: getattr(importlib.import_module(module), name) for name, module in INLINE_NAMES.items()})
    env["dsunet_hf"] = dsunet_hf
    errors = []
    for model in _models():
        try:
            check_block(code, where, {**env, "model": Instance(model)})
            return
        except AssertionError as error:
            errors.append(str(error))
    # The models that have the method say best what is wrong.
    raise AssertionError(f"no model takes it: {min(errors, key=lambda error: 'has no attribute' in error)}")


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 8


def test_readme_inline_python_calls():
    spans = inline_calls()
    assert len(spans) >= 10
    for line, code in spans:
        check_inline(code, f"README.md:{line}: `{code}`")


def test_readme_python_blocks_imports_and_calls():
    calls = checked_calls()
    for line, checked in calls.items():
        assert checked, f"README.md:{line}: no dsunet_hf call checked"
    # The blocks' main calls reach the code (the table above still types ``model`` / ``processor``).
    checked = {call for block in calls.values() for call in block}
    for call in ("Sam2UNetForImageSegmentation.from_pretrained_backbones", "processor", "model",
                 "model.save_pretrained", "model.push_to_hub", "processor.post_process_probabilities",
                 "processor.post_process_semantic_segmentation", "model.segment", "model.default_image_processor",
                 "predict_classes", "model.predict_masks", "load_model_and_processor", "predict_files",
                 "BiRefNetForImageSegmentation.from_pretrained", "SegmentationImageProcessor.from_pretrained"):
        assert call in checked, call


@pytest.mark.parametrize(("broken", "message"), [
    ("from dsunet_hf import Sam2UNetConfig, NoSuchModel", "cannot import name 'NoSuchModel'"),
    ("from dsunet_hf import Sam2UNetConfig\nSam2UNetConfig(finetune_strategyy='adapter')",
     "unexpected keyword argument 'finetune_strategyy'"),
    ("import dsunet_hf\ndsunet_hf.trainable_summary(model, verbose=True)", "unexpected keyword argument 'verbose'"),
    ("from dsunet_hf.prompts import BoxPrompt\nBoxPrompt(1, 2, 3, 4, 5, 6)", "too many positional arguments"),
    ("from dsunet_hf import SegmentationImageProcessor\nprocessor = SegmentationImageProcessor()\n"
     "processor.post_process_probabilities(logits, target_size=s)", "unexpected keyword argument 'target_size'"),
    ("from dsunet_hf import SegmentationImageProcessor\nprocessor = SegmentationImageProcessor()\n"
     "processor.post_process_masks(logits)", "has no attribute 'post_process_masks'"),
    ("from dsunet_hf import Dinov2ForSemanticSegmentation, Dinov2SegConfig\n"
     "model = Dinov2ForSemanticSegmentation.from_pretrained_backbones(Dinov2SegConfig())\n"
     "model.segment(x, schedules='slide')", "unexpected keyword argument 'schedules'"),
    ("from transformers import AutoModel\nmodel = AutoModel.from_pretrained('me/visual-prompt-head')\n"
     "model.predict_masks(a, b, c, d, e)", "too many positional arguments"),
    ("from dsunet_hf.predict import load_model_and_processor, predict_files\n"
     "model, processor = load_model_and_processor('ZhengPeng7/BiRefNet_lite')\n"
     "predict_files(model, processor, [], 'out', cut_out=True)", "unexpected keyword argument 'cut_out'"),
    ("from dsunet_hf import DSUNetConfig, DSUNetForImageSegmentation\n"
     "model = DSUNetForImageSegmentation.from_pretrained_backbones(DSUNetConfig())\n"
     "processor = model.default_image_processor()\nprocessor('a.jpg', mask='m.png')",
     "unexpected keyword argument 'mask'"),
    ("import dsunet_hf\nx = dsunet_hf.trainable_summary(1)\nx.strip()", "cannot tell what x is"),
    ("from dsunet_hf.predict import load_model_and_processor\nmodel, processor = load_model_and_processor('me/new')\n"
     "model.segment(x)", "cannot tell what model is in model.segment(x) (a Hub id: add it to HUB_MODELS"),
    ("from dsunet_hf import SegmentationImageProcessor\nprocessor = SegmentationImageProcessor()\n"
     "processor.size.get('height')\nprocessor.resize_to(1)", "has no attribute 'resize_to'"),
    ("model = Sam2UNetForImageSegmentation.from_pretrained_backbones()", "Sam2UNetForImageSegmentation is not imported"),
])
def test_checker_catches_broken_snippets(broken, message):
    with pytest.raises(AssertionError, match=re.escape(message)):
        check_block(broken, "broken")


@pytest.mark.parametrize(("broken", "message"), [
    ("`model.merge_loras()`", "has no attribute 'merge_loras'"),
    ("`model.prompt_threshold(refined=False)`", "unexpected keyword argument 'refined'"),
    ("`dsunet_hf.hiera_hub_repo(\"large\", \"2.1\", 3)`", "too many positional arguments"),
    ("`MaskPrompt(path, thresh=0.5)`", "unexpected keyword argument 'thresh'"),
    ("`DSUNetConfig(id2labels=...)`", "unexpected keyword argument 'id2labels'"),
    ("`prompt_threshold(refined=False)`", "unexpected keyword argument 'refined'"),
    ("`reference_memory(images, masks, coverage=0.5)`", "unexpected keyword argument 'coverage'"),
])
def test_inline_checker_catches_broken_spans(broken, message):
    ((line, code),) = inline_calls(f"text\n\n```python\n`model.nothing()`\n```\nsee {broken} here")
    assert line == 6
    with pytest.raises(AssertionError, match=re.escape(message)):
        check_inline(code, "broken")


def test_optional_module_is_the_only_skipped_import():
    with pytest.raises(AssertionError, match="No module named 'no_such_module'"):
        check_block("import no_such_module", "broken")
