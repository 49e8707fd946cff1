"""The lm-evaluation-harness bridge: every mot model as an lm-eval ``LM``, and local task files.

``MotLM`` is an ``lm_eval.api.model.LM`` over any mot evaluation model -- an object with
``loglikelihood([(context, continuation)]) -> [LogLikelihood]`` and ``generate(prompts, params)``:
an expert (:class:`~mot.evaluation.hf_model.HFModel`), a Mixture of Thoughts (``fast`` or ``full``), a
routed baseline, a moellama checkpoint, a multi-token checkpoint (generation by verified decoding, which
is the backbone's own greedy output; scoring by the backbone).  ``MotLM.from_spec(spec)`` (or
``load_scorer_and_generator``) resolves any spec ``mot`` resolves.  The three request types:

``loglikelihood``
    The model's own ``loglikelihood``: the context's trailing whitespace moves to the continuation, the
    joined text is tokenised once and split where the context's tokens end, an empty context becomes the
    BOS (else EOS) token, a BOS first when the tokenizer adds one -- lm-eval's ``hf`` conventions.
``loglikelihood_rolling``
    Experts (and the routed expert of a routed model or a MoT in ``fast`` mode): lm-eval's disjoint
    rolling windows of the model's context length over the text's tokens, the first window conditioned
    on the BOS (else EOS) token, as lm-eval's ``hf`` model does.  A MoT in ``full`` mode has none (its
    peers read a prompt, and a text scored from its first token has none): a clear error.  Other models
    score the whole text as the continuation of an empty context (one window).
``generate_until``
    The model's ``generate`` with ``until`` as stop strings, ``max_gen_toks`` (default 256) new tokens,
    greedy unless ``do_sample`` with a temperature; the prompt keeps its last tokens when it would not
    fit the context with the new tokens.

Task files: ``TASKS_DIR`` holds task YAMLs (``mot_mmlu_<subject>``, ``mot_cmmlu_<subject>``, the
groups ``mot_mmlu``/``mot_cmmlu``, and ``mot_gsm8k``) with lm-eval's own prompt formats for MMLU,
CMMLU and GSM8K that read local files in the upstream layout (see ``harness_tasks/loaders.py``);
pass it to lm-eval as ``--include_path``.  ``write_task_files`` generates them (a test keeps the
shipped files equal to its output).

Python route::

    import lm_eval
    from lm_eval.tasks import TaskManager
    from mot.evaluation.harness import MotLM, TASKS_DIR

    lm = MotLM.from_spec("smollm2-135m")
    tasks = TaskManager(include_path=str(TASKS_DIR), metadata={"mmlu_dir": "/data/mmlu/data"})
    results = lm_eval.simple_evaluate(model=lm, tasks=["mot_mmlu_anatomy"], task_manager=tasks, limit=20)
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mot.errors import MotError, UsageError
from mot.evaluation.hf_model import HFModel, score_encoded
from mot.generation import GenerationParams

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - the error names the fix
    raise MotError("the lm-evaluation-harness bridge needs lm-eval: pip install 'mot[harness]' "
                   "(or pip install lm-eval)") from None

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "harness_tasks"
BENCHMARKS = ("mmlu", "cmmlu", "gsm8k")  # the local data each task family reads (metadata key <name>_dir)
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until
CHUNK = 256  # requests per model call (progress granularity; the model batches inside)


@register_model("mot")
class MotLM(LM):
    """lm-eval ``LM`` over a mot evaluation model (see the module docstring); registered with lm-eval as
    ``mot`` once this module is imported (``simple_evaluate(model="mot", model_args="spec=smollm2-135m")``).

    ``model``: a loaded mot model (``loglikelihood`` and/or ``generate``), or a spec string resolved with
    :func:`load_scorer_and_generator` (``mode``, ``device``, ``dtype``, ``batch_size`` apply then).  ``generator``: a
    separate text generator for ``generate_until`` (a multi-token checkpoint's verified decoder).
    lm-eval's ``create_from_arg_string("spec=...,mode=full")`` and ``simple_evaluate(model=MotLM(...))``
    both work."""

    def __init__(self, model: Any = None, *, spec: str | None = None, generator: Any = None, mode: str = "fast",
                 device: str | None = None, dtype: str = "float32", batch_size: int | str | None = 8,
                 max_batch_size: int | None = None, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
                 progress: bool = True, **load_options: Any) -> None:
        super().__init__()
        if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
            batch_size = 8
        batch_size = int(batch_size)
        if isinstance(model, str):
            spec, model = model, None
        if model is None:
            if spec is None:
                raise UsageError("MotLM needs a model object or a spec (MotLM(spec='smollm2-135m'))")
            model, loaded_generator = load_scorer_and_generator(spec, mode=mode, device=device or "cpu", dtype=dtype,
                                                 batch_size=batch_size, **load_options)
            generator = generator or loaded_generator
        self.model = model
        self.generator = generator if generator is not None else model
        self.name = str(getattr(model, "name", spec or type(model).__name__))
        self.max_gen_toks = int(max_gen_toks)
        self.progress = progress

    @classmethod
    def from_spec(cls, spec: str, **options: Any) -> MotLM:
        """``MotLM`` over the model ``spec`` names (see :func:`load_scorer_and_generator` for the options)."""
        return cls(spec=spec, **options)

    # ------------------------------------------------------------------------------------------ requests

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        if not callable(getattr(self.model, "loglikelihood", None)):
            raise UsageError(f"model {self.name!r} cannot score log-likelihoods (no loglikelihood method)")
        pairs = [tuple(r.args[:2]) for r in requests]
        out: list[tuple[float, bool]] = []
        for start in self._chunks(len(pairs), "loglikelihood"):
            chunk = pairs[start:start + CHUNK]
            for pair, result in zip(chunk, self.model.loglikelihood(chunk), strict=True):
                value = (float(result[0]), bool(result[2]))
                self.cache_hook.add_partial("loglikelihood", pair, value)
                out.append(value)
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        texts = [r.args[0] for r in requests]
        out: list[float] = []
        for start in self._chunks(len(texts), "loglikelihood_rolling"):
            chunk = texts[start:start + CHUNK]
            for text, value in zip(chunk, rolling_loglikelihood(self.model, chunk), strict=True):
                self.cache_hook.add_partial("loglikelihood_rolling", (text,), value)
                out.append(value)
        return out

    def generate_until(self, requests) -> list[str]:
        if not callable(getattr(self.generator, "generate", None)):
            raise UsageError(f"model {self.name!r} cannot generate (no generate method)")
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = defaultdict(list)  # one GenerationParams per distinct gen_kwargs
        for i, r in enumerate(requests):
            groups[json.dumps(r.args[1] if len(r.args) > 1 else {}, sort_keys=True, default=str)].append(i)
        bar = self._bar(len(requests), "generate_until")
        for key, rows in groups.items():
            params = generation_params(json.loads(key), self.max_gen_toks)
            for start in range(0, len(rows), CHUNK):
                chunk = rows[start:start + CHUNK]
                replies = self.generator.generate([requests[i].args[0] for i in chunk], params)
                for i, reply in zip(chunk, replies, strict=True):
                    out[i] = reply
                    self.cache_hook.add_partial("generate_until", requests[i].args, reply)
                if bar is not None:
                    bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return out  # type: ignore[return-value]

    def _bar(self, total: int, what: str):
        if not self.progress or total == 0:
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=f"{self.name}: {what}")

    def _chunks(self, total: int, what: str):
        bar = self._bar(total, what)
        for start in range(0, total, CHUNK):
            yield start
            if bar is not None:
                bar.update(min(CHUNK, total - start))
        if bar is not None:
            bar.close()


# ------------------------------------------------------------------------------------------ scoring


def generation_params(gen_kwargs: Mapping[str, Any], max_gen_toks: int = DEFAULT_MAX_GEN_TOKS) -> GenerationParams:
    """lm-eval ``gen_kwargs`` (``until``, ``max_gen_toks``, ``do_sample``, ``temperature``, ``top_p``,
    ``top_k``) as mot ``GenerationParams``; greedy unless ``do_sample`` with a positive temperature."""
    kwargs = dict(gen_kwargs)
    until = kwargs.pop("until", None) or []
    stops = [until] if isinstance(until, str) else [str(s) for s in until]
    max_new = int(kwargs.pop("max_gen_toks", None) or kwargs.pop("max_new_tokens", None) or max_gen_toks)
    do_sample = bool(kwargs.pop("do_sample", False))
    temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
    top_p = float(kwargs.pop("top_p", 1.0) or 1.0)
    top_k = int(kwargs.pop("top_k", 0) or 0)
    seed = kwargs.pop("seed", None)
    if kwargs:
        log.warning("generate_until: ignoring generation options mot does not use: %s", ", ".join(sorted(kwargs)))
    if not do_sample:
        temperature, top_p, top_k = 0.0, 1.0, 0
    elif temperature <= 0:
        temperature = 1.0  # do_sample without a temperature: HF's default
    return GenerationParams(max_new_tokens=max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                            stop=[s for s in stops if s], seed=None if seed is None else int(seed))


def rolling_loglikelihood(model: Any, texts: Sequence[str]) -> list[float]:
    """``log P(text)`` of each text (see the module docstring): rolling windows for experts and routed
    experts, one window over an empty context otherwise."""
    texts = list(texts)
    if isinstance(model, HFModel):
        return _rolling_windows(model, texts)
    inner = getattr(model, "inner", None)  # a memoising wrapper around an expert scorer
    if isinstance(inner, HFModel):
        return _rolling_windows(inner, texts)
    if getattr(model, "mode", None) == "fast" and getattr(model, "routed", None) is not None:
        model = model.routed  # a MoT in fast mode is its router over the experts
    experts, route = getattr(model, "experts", None), getattr(model, "_route", None)
    if experts and callable(route) and getattr(model, "mode", "fast") == "fast":
        picks = route(texts)
        out: list[float] = [0.0] * len(texts)
        by_expert: dict[int, list[int]] = defaultdict(list)
        for i, pick in enumerate(picks):
            by_expert[int(pick)].append(i)
        for pick, rows in by_expert.items():
            for i, value in zip(rows, rolling_loglikelihood(experts[pick], [texts[i] for i in rows]), strict=True):
                out[i] = value
        return out
    if getattr(model, "mode", None) == "full":
        raise UsageError(f"model {getattr(model, 'name', 'mot')!r}: a Mixture of Thoughts in full mode has no rolling "
                         "log-likelihood (perplexity tasks): its peers read a prompt, and a text scored from its "
                         "first token has none; use --mot-mode fast (the routed expert's windows)")
    return [float(r[0]) for r in model.loglikelihood([("", t) for t in texts])]


def _rolling_windows(scorer: HFModel, texts: list[str]) -> list[float]:
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    if scorer.bos_id is None:
        raise MotError(f"{scorer.name}: rolling log-likelihood needs a BOS or EOS token to start the first window")
    windows: list[tuple[list[int], list[int]]] = []
    owner: list[int] = []
    for i, text in enumerate(texts):
        tokens = scorer._prefix() + scorer._encode(text)
        for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                token_list=tokens, prefix_token=scorer.bos_id, max_seq_len=scorer.max_length, context_len=1)):
            windows.append((list(context), list(continuation)))
            owner.append(i)
    totals = [0.0] * len(texts)
    results = score_encoded(windows, scorer._logprobs, scorer.max_length, scorer.batch_size, share_context=False)
    for i, result in zip(owner, results, strict=True):
        totals[i] += float(result[0])
    return totals


# ------------------------------------------------------------------------------------------ loading


def model_kind(spec: str) -> str:
    """``multitoken``, ``mot``, ``moellama`` or ``expert`` (hub id, local model, ``.gguf``, asset alias): the
    kind ``mot.loading.spec_kind`` finds, with a ``CKPT:MODE`` suffix naming a MoT checkpoint too."""
    from mot.loading import spec_kind

    base, sep, _ = spec.rpartition(":")
    if sep and base and spec_kind(base) == "mot":
        return "mot"
    kind = spec_kind(spec)
    return "expert" if kind == "hf" else kind


def load_scorer_and_generator(spec: str, *, mode: str = "fast", device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
               chat_template: bool = False, lookup: int = 5, tree: int = 3) -> tuple[Any, Any]:
    """``(scorer, generator)`` for ``spec``: the same object for experts, MoT checkpoints (``mode`` fast or
    full; a ``CKPT:full`` spec says it too) and moellama; for a multi-token checkpoint the backbone
    scores and ``MultiTokenGenerator`` (verified decoding with ``lookup`` prompt-lookup drafts and a
    ``tree``-node draft tree: exactly the backbone's greedy output) generates."""
    from mot.loading import ModelPool

    if mode not in ("fast", "full"):
        raise UsageError(f"--mot-mode must be 'fast' or 'full', got {mode!r}")
    kind = model_kind(spec)
    pool = ModelPool(device=device, dtype=dtype, batch_size=batch_size, chat_template=chat_template)
    if kind == "multitoken":
        from mot.evaluation.routed import expert_scorer
        from mot.multitoken import MultiTokenGenerator, load_multitoken

        model = load_multitoken(Path(spec).expanduser(), backbone_device=device)
        scorer = expert_scorer(model.backbone, model.tokenizer, spec, batch_size=batch_size,
                               chat_template=chat_template)
        return scorer, MultiTokenGenerator(model, name=spec, lookup=lookup, tree=tree)
    if kind == "moellama":
        import mot.moellama.hf  # noqa: F401 - registers the architecture with AutoModelForCausalLM
        from mot.loading import moellama_model_dir

        spec = str(moellama_model_dir(spec))  # a run directory or step-*/ checkpoint: its model directory
    if kind == "mot" and not spec.endswith((":fast", ":full")):
        spec = f"{spec}:{mode}"
    rows = pool.models(spec, spec)
    if len(rows) != 1:
        raise UsageError(f"--model {spec!r} gives {len(rows)} models ({', '.join(rows)}); give one")
    model = next(iter(rows.values()))
    return model, model


# ------------------------------------------------------------------------------------------ evaluation


def data_metadata(data: Mapping[str, str | Path] | None) -> dict[str, str]:
    """``{"mmlu": PATH}`` -> the task metadata the local task files read (``{"mmlu_dir": PATH}``)."""
    out: dict[str, str] = {}
    for name, path in (data or {}).items():
        if name not in BENCHMARKS:
            raise UsageError(f"--data {name}=...: unknown benchmark {name!r}; the local task files read "
                             f"{', '.join(BENCHMARKS)}")
        out[f"{name}_dir"] = str(Path(path).expanduser())
    return out


def parse_data_options(values: Sequence[str]) -> dict[str, Path]:
    """``--data NAME=PATH`` (repeatable) or ``--data ROOT`` (a directory holding ``mmlu/``, ``cmmlu/``,
    ``gsm8k/``) -> ``{name: path}``."""
    out: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name in BENCHMARKS:
            out[name] = Path(path).expanduser()
            continue
        root = Path(value).expanduser()
        found = {n: root / n for n in BENCHMARKS if (root / n).is_dir()}
        if not found:
            raise UsageError(f"--data {value!r}: expected NAME=PATH with NAME one of {', '.join(BENCHMARKS)}, "
                             f"or a directory holding {'/, '.join(BENCHMARKS)}/")
        for n, p in found.items():
            out.setdefault(n, p)
    return out


def task_manager(data: Mapping[str, str | Path] | None = None, include_path: Sequence[str | Path] = (),
                 include_defaults: bool = True):
    """lm-eval's ``TaskManager`` with mot's task files (and ``include_path``) and the data directories."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR), *(str(Path(p).expanduser()) for p in include_path)]
    return TaskManager(include_path=paths, include_defaults=include_defaults, metadata=data_metadata(data))


def evaluate(lm: LM, tasks: Sequence[str | dict], *, data: Mapping[str, str | Path] | None = None,
             include_path: Sequence[str | Path] = (), include_defaults: bool | None = None, **options: Any) -> dict:
    """``lm_eval.simple_evaluate`` over ``lm`` with mot's task files; ``options`` go to simple_evaluate
    (``limit``, ``num_fewshot``, ``log_samples``, ``gen_kwargs``, ...).  ``include_defaults=None``: lm-eval's
    own task index (thousands of files: seconds to build) only when a task is not found in mot's files
    and ``include_path``."""
    from lm_eval import simple_evaluate

    names = [t for t in tasks if isinstance(t, str)]
    manager = task_manager(data, include_path, bool(include_defaults))
    if include_defaults is None and any(not manager.match_tasks([t]) for t in names):
        manager = task_manager(data, include_path, True)
    unknown = [t for t in names if not manager.match_tasks([t])]
    if unknown:
        raise UsageError(f"unknown lm-eval task(s): {', '.join(unknown)}; mot's local tasks are mot_mmlu, "
                         "mot_mmlu_<subject>, mot_cmmlu, mot_cmmlu_<subject> and mot_gsm8k (--include-path adds yours)")
    results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, **options)
    if results is None:
        raise MotError("lm-eval returned no results")
    return results


def items_task(name: str, items: Sequence[Any], style: str = "letters") -> dict:
    """An lm-eval task (a config dict for ``simple_evaluate``) over mot multiple-choice ``items`` in ``mot eval
    run``'s own prompt format (``scoring.format_multiple_choice``): lm-eval then scores exactly the
    ``(context, continuation)`` pairs mot scores.  Documents keep the item ``id``."""
    from mot.evaluation.scoring import format_multiple_choice

    docs = []
    for item in items:
        context, continuations = format_multiple_choice(item, style)
        if not all(c.startswith(" ") for c in continuations):
            raise UsageError(f"item {item.id}: continuations must start with the space lm-eval puts between "
                             "context and choice")
        docs.append({"id": str(item.id), "context": context, "choices": [c[1:] for c in continuations],
                     "answer": item.answer_index if item.answer_index is not None else -1})

    def dataset(**_: Any):
        from datasets import Dataset, DatasetDict

        return DatasetDict({"test": Dataset.from_list(docs)})

    return {"task": name, "custom_dataset": dataset, "test_split": "test", "output_type": "multiple_choice",
            "doc_to_text": "context", "doc_to_choice": "choices", "doc_to_target": "answer", "target_delimiter": " ",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0}}


def sample_logprobs(results: dict, task: str) -> dict[int, list[float]]:
    """Per document (lm-eval's ``doc_id``) the log-likelihood of each choice, from results run with
    ``log_samples=True``."""
    samples = results.get("samples", {}).get(task)
    if samples is None:
        raise MotError(f"no samples for task {task!r} in the results (run with log_samples=True)")
    return {int(s["doc_id"]): [float(r[0]) for r in s["filtered_resps"]] for s in samples}




def json_safe(results: dict) -> dict:
    """``results`` with what JSON cannot hold (numpy values, functions in task configs) as lm-eval writes it."""
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(results, default=handle_non_serializable, ensure_ascii=False))


def results_table(results: dict) -> str:
    """lm-eval's own result table(s) for ``results``."""
    from lm_eval.utils import make_table

    table = make_table(results)
    if results.get("groups"):
        table += "\n" + make_table(results, "groups")
    return table


# ------------------------------------------------------------------------------------------ task files

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine",
    "college_physics", "computer_security", "conceptual_physics", "econometrics", "electrical_engineering",
    "elementary_mathematics", "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality",
    "international_law", "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy",
    "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    "virology", "world_religions",
)
CMMLU_SUBJECTS = {
    "agronomy": "农学", "anatomy": "解剖学", "ancient_chinese": "古汉语", "arts": "艺术学", "astronomy": "天文学",
    "business_ethics": "商业伦理", "chinese_civil_service_exam": "中国公务员考试",
    "chinese_driving_rule": "中国驾驶规则", "chinese_food_culture": "中国饮食文化",
    "chinese_foreign_policy": "中国外交政策", "chinese_history": "中国历史", "chinese_literature": "中国文学",
    "chinese_teacher_qualification": "中国教师资格", "clinical_knowledge": "临床知识",
    "college_actuarial_science": "大学精算学", "college_education": "大学教育学",
    "college_engineering_hydrology": "大学工程水文学", "college_law": "大学法律",
    "college_mathematics": "大学数学", "college_medical_statistics": "大学医学统计",
    "college_medicine": "大学医学", "computer_science": "计算机科学", "computer_security": "计算机安全",
    "conceptual_physics": "概念物理学", "construction_project_management": "建设工程管理", "economics": "经济学",
    "education": "教育学", "electrical_engineering": "电气工程", "elementary_chinese": "小学语文",
    "elementary_commonsense": "小学常识", "elementary_information_and_technology": "小学信息技术",
    "elementary_mathematics": "初等数学", "ethnology": "民族学", "food_science": "食品科学", "genetics": "遗传学",
    "global_facts": "全球事实", "high_school_biology": "高中生物", "high_school_chemistry": "高中化学",
    "high_school_geography": "高中地理", "high_school_mathematics": "高中数学",
    "high_school_physics": "高中物理学", "high_school_politics": "高中政治", "human_sexuality": "人类性行为",
    "international_law": "国际法学", "journalism": "新闻学", "jurisprudence": "法理学",
    "legal_and_moral_basis": "法律与道德基础", "logical": "逻辑学", "machine_learning": "机器学习",
    "management": "管理学", "marketing": "市场营销", "marxist_theory": "马克思主义理论", "modern_chinese": "现代汉语",
    "nutrition": "营养学", "philosophy": "哲学", "professional_accounting": "专业会计",
    "professional_law": "专业法学", "professional_medicine": "专业医学", "professional_psychology": "专业心理学",
    "public_relations": "公共关系", "security_study": "安全研究", "sociology": "社会学",
    "sports_science": "体育学", "traditional_chinese_medicine": "中医中药", "virology": "病毒学",
    "world_history": "世界历史", "world_religions": "世界宗教",
}


# lm-eval's prompt formats for these benchmarks (the text the model sees; the YAML layout is ours)
_MMLU_TEXT = ("{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}"
              "\nAnswer:")
_CMMLU_TEXT = "{{Question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n答案："
_GSM8K_STRICT = r"#### (\-?[0-9\.\,]+)"  # the answer after '####'
_GSM8K_FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"  # the last number
_HEADER = ("# Generated by mot.evaluation.harness.write_task_files; do not edit by hand.\n"
           "# Reads local files (harness_tasks/loaders.py): metadata {key} or the environment variable {env}.\n")


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def task_files() -> dict[str, str]:
    """File name -> text of every task file in ``TASKS_DIR`` (self-contained YAMLs: no templates)."""
    files: dict[str, str] = {}
    mc_tail = ('output_type: multiple_choice\n'
               'test_split: test\n'
               'fewshot_split: dev\n'
               'fewshot_config:\n'
               '  sampler: first_n\n'
               'doc_to_choice: ["A", "B", "C", "D"]\n')
    mmlu_body = ("custom_dataset: !function loaders.mmlu\n" + mc_tail
                 + f"doc_to_text: {_q(_MMLU_TEXT)}\n"
                 + "doc_to_target: answer\n"
                 + "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
                 + "metadata:\n  version: 1.0\n")
    cmmlu_body = ("custom_dataset: !function loaders.cmmlu\n" + mc_tail
                  + f"doc_to_text: {_q(_CMMLU_TEXT)}\n"
                  + "doc_to_target: \"{{['A', 'B', 'C', 'D'].index(Answer)}}\"\n"
                  + "metric_list:\n"
                  + "".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n"
                            for m in ("acc", "acc_norm"))
                  + "metadata:\n  version: 1.0\n")
    for subject in MMLU_SUBJECTS:
        description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        files[f"mot_mmlu_{subject}.yaml"] = (
            _HEADER.format(key="mmlu_dir", env="MOT_MMLU_DIR")
            + f"task: mot_mmlu_{subject}\ntask_alias: {subject}\n"
            + f"dataset_kwargs:\n  subject: {subject}\ndescription: {_q(description)}\n" + mmlu_body)
    for subject, name in CMMLU_SUBJECTS.items():
        description = f"以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n"
        files[f"mot_cmmlu_{subject}.yaml"] = (
            _HEADER.format(key="cmmlu_dir", env="MOT_CMMLU_DIR")
            + f"task: mot_cmmlu_{subject}\ntask_alias: {subject}\n"
            + f"dataset_kwargs:\n  subject: {subject}\ndescription: {_q(description)}\n" + cmmlu_body)
    for group, subjects, metrics in (("mot_mmlu", MMLU_SUBJECTS, ("acc",)),
                                     ("mot_cmmlu", tuple(CMMLU_SUBJECTS), ("acc", "acc_norm"))):
        files[f"{group}.yaml"] = (
            f"# {group}: every subject (a partial local copy: list the subjects it has instead)\n"
            f"group: {group}\ntask:\n" + "".join(f"  - {group}_{s}\n" for s in subjects)
            + "aggregate_metric_list:\n"
            + "".join(f"  - metric: {m}\n    aggregation: mean\n    weight_by_size: true\n" for m in metrics)
            + "metadata:\n  version: 1.0\n")
    files["mot_gsm8k.yaml"] = (
        _HEADER.format(key="gsm8k_dir", env="MOT_GSM8K_DIR")
        + "task: mot_gsm8k\n"
        + "custom_dataset: !function loaders.gsm8k\n"
        + "output_type: generate_until\n"
        + "training_split: train\nfewshot_split: train\ntest_split: test\n"
        + f"doc_to_text: {_q('Question: {{question}}' + chr(10) + 'Answer:')}\n"
        + "doc_to_target: \"{{answer}}\"\n"
        + "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        + "    ignore_case: true\n    ignore_punctuation: false\n    regexes_to_ignore:\n"
        + "".join(f"      - {_q(r)}\n" for r in (",", "\\$", "(?s).*#### ", "\\.$"))
        + "generation_kwargs:\n  until:\n"
        + "".join(f"    - {_q(s)}\n" for s in ("Question:", "</s>", "<|im_end|>"))
        + "  do_sample: false\n  temperature: 0.0\n"
        + "repeats: 1\nnum_fewshot: 5\n"
        + "filter_list:\n"
        + "  - name: \"strict-match\"\n    filter:\n"
        + f"      - function: \"regex\"\n        regex_pattern: {_q(_GSM8K_STRICT)}\n"
        + "      - function: \"take_first\"\n"
        + "  - name: \"flexible-extract\"\n    filter:\n"
        + f"      - function: \"regex\"\n        group_select: -1\n        regex_pattern: {_q(_GSM8K_FLEXIBLE)}\n"
        + "      - function: \"take_first\"\n"
        + "metadata:\n  version: 3.0\n")
    return files


def write_task_files(directory: str | Path = TASKS_DIR) -> list[Path]:
    """Write :func:`task_files` into ``directory`` (the package's own ``TASKS_DIR`` by default)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in task_files().items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written
