"""Parallel-code benchmarks: ParEval prompts, BabelTower C++/CUDA pairs, and C++->CUDA JSONL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mot.data._io import (
    data_error,
    find_files,
    iter_json_array,
    iter_jsonl,
    open_text,
    require,
    require_str,
    take,
)
from mot.data.items import ParEvalPrompt, TranslationPair
from mot.errors import DataError, UsageError

PAREVAL_FORMAT = '{"problem_type", "language", "name", "parallelism_model", "prompt"}'
PAREVAL_TRANSLATION_KEYS = ["translation_prompt", "translation_src_model", "translation_dst_model"]


def load_pareval(path: str | Path | None, split: str = "generation", limit: int | None = None,
                 parallelism_models: list[str] | None = None) -> list[ParEvalPrompt]:
    """ParEval prompts (Nichols et al., 2024, "Can Large Language Models Write Parallel Code?").

    Upstream: github.com/parallelcodefoundry/ParEval, ``prompts/generation-prompts.json`` and
    ``prompts/translation-prompts.json``.  Each is a JSON list of objects
    ``{"problem_type", "language", "name", "parallelism_model", "prompt"}``; translation prompts add
    ``translation_prompt``, ``translation_src_model``, ``translation_dst_model``,
    ``translation_src_example`` and ``translation_function_name`` (the text given to the model is
    ``translation_prompt``).  ``split`` is the task: ``generation`` or ``translation``.  ``path`` may
    be the ParEval checkout, its ``prompts/`` directory, or the JSON file itself.  File order is kept;
    ``parallelism_models`` (e.g. ``["serial", "omp"]``) filters before ``limit``.
    """
    if split not in ("generation", "translation"):
        raise UsageError(f"ParEval split (task) must be 'generation' or 'translation', got {split!r}")
    if path is None:
        raise UsageError("benchmark 'pareval' reads local files only: pass --data PATH to a ParEval checkout "
                         "(github.com/parallelcodefoundry/ParEval) or its prompts JSON")
    name = f"{split}-prompts.json"
    file = find_files(path, [name, f"prompts/{name}"], name)[0]
    required = ["problem_type", "language", "name", "parallelism_model", "prompt"]
    if split == "translation":
        required += PAREVAL_TRANSLATION_KEYS

    def rows() -> Iterator[ParEvalPrompt]:
        for line, rec in iter_json_array(file, f"ParEval prompt objects {PAREVAL_FORMAT}"):
            if not isinstance(rec, dict):
                raise data_error(file, line, f"expected a prompt object {PAREVAL_FORMAT}, got {type(rec).__name__}")
            require(rec, required, file, line, PAREVAL_FORMAT)
            if parallelism_models and rec["parallelism_model"] not in parallelism_models:
                continue
            text = require_str(rec, "translation_prompt" if split == "translation" else "prompt", file, line)
            yield ParEvalPrompt(name=rec["name"], problem_type=rec["problem_type"], language=rec["language"],
                                parallelism_model=rec["parallelism_model"], prompt=text, task=split, record=rec)

    return take(rows(), limit)


# ---------------------------------------------------------------- BabelTower

_NO_SPACE_BEFORE = {",", ";", ")", "]", ".", "->", "::", ">>>"}
_NO_SPACE_AFTER = {"(", "[", ".", "->", "::", "<<<", "!", "~"}
_KEYWORDS_BEFORE_PAREN = {"if", "for", "while", "switch", "return", "catch", "sizeof"}
# TransCoder-style escapes used inside tokenised string and character literals
_LITERAL_ESCAPES = {"\u2581": " ", "STRNEWLINE": "\\n", "TABSYMBOL": "\\t"}


def detokenize_cpp(tokens: str, indent: str = "  ") -> str:
    """Turn one line of space-separated C/C++/CUDA tokens (BabelTower's ``*.tok`` files, produced by a
    TransCoder-style tokenizer) into readable code.

    Rules, applied token by token:

    * inside literals, ``▁`` (U+2581) is a space and ``STRNEWLINE``/``TABSYMBOL`` are ``\\n``/``\\t``;
    * no space before ``, ; ) ] . -> :: >>>``, none after ``( [ . -> :: <<< ! ~``;
    * ``(`` sticks to a preceding name (a call) except after ``if for while switch return catch sizeof``,
      and to ``>>>`` (a kernel launch); ``[`` and ``<<<`` stick to a preceding name, ``)`` or ``]``;
    * ``++``/``--`` stick to the preceding name, ``)`` or ``]`` (postfix), otherwise to the next token;
    * a line break follows ``{``, ``}`` and every ``;`` outside parentheses (so ``for (a; b; c)``
      stays on one line); each ``{`` indents by ``indent``; ``} else`` and ``};`` stay together;
    * ``ENDCOM`` (the end of a preprocessor line such as ``#pragma unroll``) is a line break and a
      token starting with ``#`` begins a new line.

    All other tokens are separated by one space.  Tokens (``ENDCOM`` aside) are never changed or reordered, so the
    result lexes to the same token sequence as the input (the original formatting and comments are
    not recoverable).
    """
    toks = [_unescape(t) for t in tokens.split()]
    lines: list[str] = []
    current = ""
    depth = paren = 0
    glue_next = False  # the previous token was a prefix ++/--

    def newline() -> None:
        nonlocal current
        if current.strip():
            lines.append(indent * depth + current.strip())
        current = ""

    for i, tok in enumerate(toks):
        prev = toks[i - 1] if i else ""
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        if tok == "ENDCOM":  # the tokenizer's end of a preprocessor line (``#pragma unroll ENDCOM``)
            newline()
            continue
        if tok.startswith("#") and current.strip():  # a directive starts its own line
            newline()
        if tok == "}":
            newline()
            depth = max(depth - 1, 0)
            current = "}"
            if nxt not in ("else", ";", ",", ")", "while"):
                newline()
            continue
        postfix = tok in ("++", "--") and (_is_name(prev) or prev in (")", "]"))
        glue = (not current or glue_next or prev in _NO_SPACE_AFTER or tok in _NO_SPACE_BEFORE or postfix
                or (tok == "(" and (prev == ">>>" or _is_name(prev) and prev not in _KEYWORDS_BEFORE_PAREN))
                or (tok in ("[", "<<<") and (_is_name(prev) or prev in (")", "]"))))
        glue_next = tok in ("++", "--") and not postfix
        current += tok if glue else " " + tok
        if tok == "(":
            paren += 1
        elif tok == ")":
            paren = max(paren - 1, 0)
        elif tok == "{":
            newline()
            depth += 1
        elif tok == ";" and paren == 0:
            newline()
    newline()
    return "\n".join(lines)


def _unescape(tok: str) -> str:
    if tok.startswith(('"', "'")) or "\u2581" in tok:
        for k, v in _LITERAL_ESCAPES.items():
            tok = tok.replace(k, v)
    return tok


def _is_name(tok: str) -> bool:
    return bool(tok) and (tok[0].isalpha() or tok[0] == "_") and all(c.isalnum() or c == "_" for c in tok)


def load_babeltower(path: str | Path | None, split: str = "test", limit: int | None = None) -> list[TranslationPair]:
    """BabelTower C++ -> CUDA pairs (Wen et al., ICML 2022, "BabelTower: Learning to Auto-parallelized
    Program Translation").

    Upstream: github.com/IPRC-ICT/BabelTower (the paired evaluation set), files
    ``cpp.para.{test,valid}.tok`` and ``cuda.para.{test,valid}.tok`` in one directory: line ``i`` of
    the two files is one aligned pair, each a whole function as space-separated tokens.
    ``source``/``target`` are detokenised with :func:`detokenize_cpp`; the tokenised lines are kept in
    ``meta["source_tokens"]``/``meta["target_tokens"]`` (BabelTower's BLEU is computed on tokens).
    """
    if split not in ("test", "valid"):
        raise UsageError(f"BabelTower split must be 'test' or 'valid', got {split!r}")
    if path is None:
        raise UsageError("benchmark 'babeltower' reads local files only: pass --data PATH to the directory "
                         f"holding cpp.para.{split}.tok and cuda.para.{split}.tok")
    root = Path(path)
    if root.is_file():
        root = root.parent
    cpp_file, cuda_file = root / f"cpp.para.{split}.tok", root / f"cuda.para.{split}.tok"
    for f in (cpp_file, cuda_file):
        if not f.is_file():
            raise DataError(f"{f}: no such file (BabelTower expects cpp.para.{split}.tok and cuda.para.{split}.tok)")
    cpp_lines, cuda_lines = _read_lines(cpp_file), _read_lines(cuda_file)
    if len(cpp_lines) != len(cuda_lines):
        raise DataError(f"{cpp_file} has {len(cpp_lines)} lines but {cuda_file} has {len(cuda_lines)}; "
                        "the two files must be line-aligned")

    def rows() -> Iterator[TranslationPair]:
        for i, (cpp, cuda) in enumerate(zip(cpp_lines, cuda_lines, strict=True)):
            for f, text in ((cpp_file, cpp), (cuda_file, cuda)):
                if not text.strip():
                    raise data_error(f, i + 1, "empty line; expected one tokenised function per line")
            yield TranslationPair(id=f"{split}/{i}", source=detokenize_cpp(cpp), target=detokenize_cpp(cuda),
                                  source_lang="cpp", target_lang="cuda",
                                  meta={"source_tokens": cpp.strip(), "target_tokens": cuda.strip()})

    return take(rows(), limit)


def _read_lines(path: Path) -> list[str]:
    with open_text(path) as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


CPP_CUDA_FORMAT = '{"cpp": str, "generated_cuda": str}'


def load_cpp_cuda(path: str | Path | None, split: str = "test", limit: int | None = None) -> list[TranslationPair]:
    """C++ -> CUDA pairs as JSONL, one ``{"cpp": ..., "generated_cuda": ...}`` object per line (the format
    of model-generated CUDA kept for training or evaluation; an ``id`` field is used when present,
    other fields are kept in ``meta``).  ``path`` is the ``.jsonl`` file; ``split`` is ignored."""
    del split
    if path is None:
        raise UsageError("benchmark 'cpp_cuda' reads local files only: pass --data PATH to the .jsonl file")
    file = find_files(path, ["*.jsonl"], "C++->CUDA .jsonl")[0]

    def rows() -> Iterator[TranslationPair]:
        for index, (line, rec) in enumerate(iter_jsonl(file, CPP_CUDA_FORMAT)):
            require(rec, ["cpp", "generated_cuda"], file, line, CPP_CUDA_FORMAT)
            target = rec["generated_cuda"]
            if target is not None and not isinstance(target, str):
                raise data_error(file, line, f"field 'generated_cuda' must be a string, got {type(target).__name__}")
            meta = {k: v for k, v in rec.items() if k not in ("cpp", "generated_cuda", "id")}
            yield TranslationPair(id=str(rec.get("id", index)), source=require_str(rec, "cpp", file, line),
                                  target=target, source_lang="cpp", target_lang="cuda", meta=meta)

    return take(rows(), limit)
