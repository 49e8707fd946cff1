"""Code-similarity metrics for translations and generations, each computed with the field's library.

Every corpus metric takes ``preds`` and ``refs`` (equal-length sequences of strings, one reference
per prediction; a single pair may be passed as two strings) and returns a percentage in [0, 100].

Tokenisation (shared by BLEU, ROUGE-L, CodeBLEU's n-gram parts and exact match): :func:`code_tokens`
splits code with one regular expression into identifiers/keywords, numbers (with suffixes and
exponents), string and char literals (one token each), multi-character operators (``<<<``, ``>>>``,
``->``, ``++``, ``<<=``, ``::``, ...) and single punctuation characters. Natural-language tokenizers
(sacrebleu's ``13a``, rouge-score's default) break code badly: ``13a`` leaves ``a[i]+b[i];`` mostly
as one token and rouge-score's default drops every non-alphanumeric character, so ``a+b`` and
``a*b`` would look identical. Text is therefore pre-split and joined with single spaces, and
sacrebleu runs with ``tokenize="none"``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

__all__ = [
    "bleu4",
    "chrf",
    "code_tokens",
    "codebleu",
    "codebleu_components",
    "cuda_syntax_valid",
    "edit_similarity",
    "exact_match",
    "normalize_code",
    "rouge_l",
]

_CODE_TOKEN = re.compile(
    r"""
    [A-Za-z_][A-Za-z0-9_]*                                   # identifiers and keywords
  | 0[xX][0-9a-fA-F]+[uUlL]*                                 # hex literals
  | (?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[fFuUlL]*         # decimal literals
  | "(?:\\.|[^"\\\n])*"                                      # string literals
  | '(?:\\.|[^'\\\n])*'                                      # char literals
  | <<<|>>>|<<=|>>=|->\*|\.\.\.|->|\+\+|--|&&|\|\||==|!=|<=|>=|<<|>>|::
  | \+=|-=|\*=|/=|%=|&=|\|=|\^=|\*\*|//
  | \S                                                       # any other character
    """,
    re.VERBOSE,
)


def code_tokens(code: str) -> list[str]:
    """Split code into lexical tokens (see the module docstring)."""
    return list(_tokens(code))


@functools.lru_cache(maxsize=8192)
def _tokens(code: str) -> tuple[str, ...]:
    # cached: score_translations tokenizes each string for several metrics
    return tuple(_CODE_TOKEN.findall(code))


def normalize_code(code: str) -> str:
    """Code tokens joined by single spaces: layout (spaces, newlines, indentation) no longer counts."""
    return " ".join(_tokens(code))


def _pairs(preds, refs) -> tuple[list[str], list[str]]:
    if isinstance(preds, str) and isinstance(refs, str):
        return [preds], [refs]
    preds, refs = list(preds), list(refs)
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise ValueError("no prediction/reference pairs to score")
    return preds, refs


def bleu4(preds: Sequence[str] | str, refs: Sequence[str] | str) -> float:
    """Corpus BLEU-4 (sacrebleu, ``tokenize="none"`` on :func:`normalize_code` text, default
    exponential smoothing, case-sensitive), in [0, 100]."""
    from sacrebleu.metrics import BLEU

    preds, refs = _pairs(preds, refs)
    metric = BLEU(tokenize="none", max_ngram_order=4)
    return float(
        metric.corpus_score([normalize_code(p) for p in preds], [[normalize_code(r) for r in refs]]).score
    )


def chrf(preds: Sequence[str] | str, refs: Sequence[str] | str) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2, no word n-grams), in [0, 100].

    chrF works on characters and ignores whitespace, so it needs no tokenizer; it is given
    :func:`normalize_code` text so that it sees exactly what the other metrics see.
    """
    from sacrebleu.metrics import CHRF

    preds, refs = _pairs(preds, refs)
    return float(
        CHRF().corpus_score([normalize_code(p) for p in preds], [[normalize_code(r) for r in refs]]).score
    )


def _lcs_f1(pred_tokens: Sequence[str], ref_tokens: Sequence[str]) -> float:
    from rapidfuzz.distance import LCSseq

    if not pred_tokens or not ref_tokens:
        return 0.0
    lcs = LCSseq.similarity(pred_tokens, ref_tokens)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred_tokens), lcs / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def rouge_l(preds: Sequence[str] | str, refs: Sequence[str] | str) -> float:
    """ROUGE-L F1 over :func:`code_tokens`, averaged over pairs, in [0, 100].

    The definition is rouge-score's (``RougeScorer(["rougeL"])``: P = LCS/|pred|, R = LCS/|ref|,
    F = 2PR/(P+R)); the token LCS is computed by rapidfuzz's C++ ``LCSseq`` because rouge-score's
    pure-Python LCS table costs ~10 ms per pair of kernels. The tests check both agree.
    """
    preds, refs = _pairs(preds, refs)
    return 100.0 * sum(_lcs_f1(_tokens(p), _tokens(r)) for p, r in zip(preds, refs, strict=True)) / len(preds)


def exact_match(preds: Sequence[str] | str, refs: Sequence[str] | str) -> float:
    """Share of pairs whose token sequences are equal (layout ignored, string literals and case
    kept), in [0, 100]. Note: for Python this also ignores indentation."""
    preds, refs = _pairs(preds, refs)
    return 100.0 * sum(_tokens(p) == _tokens(r) for p, r in zip(preds, refs, strict=True)) / len(preds)


def edit_similarity(preds: Sequence[str] | str, refs: Sequence[str] | str) -> float:
    """Mean normalised Levenshtein similarity (rapidfuzz: ``1 - distance / max(len)``) between
    whitespace-collapsed strings (runs of whitespace -> one space, stripped), in [0, 100]."""
    from rapidfuzz.distance import Levenshtein

    preds, refs = _pairs(preds, refs)
    collapse = functools.partial(re.compile(r"\s+").sub, " ")
    total = sum(
        Levenshtein.normalized_similarity(collapse(p).strip(), collapse(r).strip())
        for p, r in zip(preds, refs, strict=True)
    )
    return 100.0 * total / len(preds)


# ---------------------------------------------------------------- tree-sitter: CUDA grammar


@functools.cache
def _cuda_language():
    import tree_sitter
    import tree_sitter_cuda

    return tree_sitter.Language(tree_sitter_cuda.language())


@functools.cache
def _cuda_parser():
    import tree_sitter

    return tree_sitter.Parser(_cuda_language())


def cuda_syntax_valid(code: str) -> bool:
    """True when tree-sitter-cuda parses ``code`` with no ERROR or MISSING node.

    A parse check, not a compiler: undeclared names and type errors pass. Blank code is invalid.
    """
    if not code.strip():
        return False
    return not _cuda_facts(code)[0]


_LOOP_NODES = frozenset({"for_statement", "for_range_loop", "while_statement", "do_statement"})


@functools.lru_cache(maxsize=8192)
def _cuda_facts(code: str) -> tuple[bool, int]:
    """(has ERROR/MISSING nodes, number of loop statements) from one tree-sitter-cuda parse."""
    root = _cuda_parser().parse(code.encode("utf-8")).root_node
    loops, stack = 0, [root]
    while stack:
        node = stack.pop()
        loops += node.type in _LOOP_NODES
        stack.extend(node.children)
    return root.has_error, loops


# ---------------------------------------------------------------- CodeBLEU


@functools.cache
def _cpp_keywords() -> frozenset[str]:
    from importlib.resources import files

    text = files("codebleu").joinpath("keywords", "cpp.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def _grammar(grammar: str):
    if grammar == "cuda":
        return _cuda_language()
    if grammar == "cpp":
        from codebleu.utils import get_tree_sitter_language

        return get_tree_sitter_language("cpp")
    raise ValueError(f"grammar must be 'cuda' or 'cpp', got {grammar!r}")


def _subtree_sexps(tree) -> list[str]:
    """S-expressions of every subtree with children: CodeBLEU's unit of syntax match."""
    out, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        out.append(str(node))
        stack.extend(child for child in node.children if child.child_count)
    return out


def _syntax_match(refs: list[str], hyps: list[str], language) -> float:
    """codebleu's ``corpus_syntax_match`` (share of reference subtrees found among the
    prediction's subtrees, after its comment removal), computed with a set instead of codebleu's
    two list scans; the tests check both agree."""
    import tree_sitter
    from codebleu.parser import remove_comments_and_docstrings

    parser = tree_sitter.Parser(language)
    matched = total = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        ref_sexps, hyp_sexps = (
            _subtree_sexps(parser.parse(remove_comments_and_docstrings(code, "cpp").encode("utf-8")))
            for code in (ref, hyp)
        )
        hyp_set = set(hyp_sexps)
        matched += sum(sexp in hyp_set for sexp in ref_sexps)
        total += len(ref_sexps)
    return matched / total


def _dataflow_match(refs: list[str], hyps: list[str], grammar: str) -> float:
    """CodeBLEU's data-flow match with its ``cpp`` rules, from the ``codebleu`` package's own data-flow
    extraction (picklable: takes the grammar name).

    The share of the references' normalised data-flow edges found in the predictions.  Only when the
    references have no data flow at all is the match full (1.0), as CodeBLEU defines it: a prediction
    that matches none of the reference's edges scores 0 (``codebleu.calc_codebleu`` turns that 0
    into 1 too, with ``score or 1``, which would give a wrong answer 25 CodeBLEU points).
    """
    import tree_sitter
    from codebleu.dataflow_match import dfg_function, get_data_flow, normalize_dataflow
    from codebleu.parser import remove_comments_and_docstrings

    parser = tree_sitter.Parser(_grammar(grammar))
    walker = [parser, dfg_function["cpp"]]
    matched = total = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        flows = []
        for code in (hyp.strip(), ref.strip()):
            try:
                code = remove_comments_and_docstrings(code, "cpp")
            except Exception:  # noqa: BLE001 - codebleu keeps the code as is when it cannot strip it
                pass
            flows.append(normalize_dataflow(get_data_flow(code, walker)))
        hyp_flows, ref_flows = flows
        total += len(ref_flows)
        for flow in ref_flows:
            if flow in hyp_flows:
                matched += 1
                hyp_flows.remove(flow)
    return 1.0 if total == 0 else matched / total


def _codebleu_parts(
    preds: list[str],
    refs: list[str],
    keyword_sets: dict[str, frozenset[str]],
    grammar: str,
    with_dataflow: bool = True,
) -> dict[str, float]:
    """ngram, syntax and (unless asked not to) dataflow match once, plus one weighted n-gram
    match per keyword set."""
    from codebleu import bleu, weighted_ngram_match

    hyps = [p.strip() for p in preds]
    ref_texts = [r.strip() for r in refs]
    tok_hyps = [list(_tokens(h)) for h in hyps]
    tok_refs = [[list(_tokens(r))] for r in ref_texts]
    parts = {
        "ngram_match": float(bleu.corpus_bleu(tok_refs, tok_hyps)),
        "syntax_match": _syntax_match(ref_texts, hyps, _grammar(grammar)),
    }
    if with_dataflow:
        parts["dataflow_match"] = _dataflow_match(ref_texts, hyps, grammar)
    for name, keywords in keyword_sets.items():
        weighted_refs = [
            [[toks, {t: 1 if t in keywords else 0.2 for t in toks}] for toks in rs] for rs in tok_refs
        ]
        parts[name] = float(weighted_ngram_match.corpus_bleu(weighted_refs, tok_hyps))
    return parts


def codebleu_components(
    preds: Sequence[str] | str,
    refs: Sequence[str] | str,
    *,
    keywords: frozenset[str] | None = None,
    grammar: str = "cuda",
) -> dict[str, float]:
    """CodeBLEU's four components in [0, 1], from the ``codebleu`` package's own functions.

    ``ngram_match`` (BLEU-4 over :func:`code_tokens`), ``weighted_ngram_match`` (unigram weight 1
    for ``keywords``, 0.2 otherwise; default: codebleu's C++ keyword list), ``syntax_match``
    (matching AST subtrees) and ``dataflow_match``, the last two with codebleu's ``cpp`` rules.
    ``grammar="cuda"`` parses with tree-sitter-cuda (a superset of the C++ grammar with the same
    node names): tree-sitter-cpp turns ``__global__`` and ``<<<...>>>`` into ERROR nodes. With
    ``grammar="cpp"`` the result equals ``codebleu.calc_codebleu(lang="cpp", tokenizer=code_tokens)``.
    """
    preds, refs = _pairs(preds, refs)
    keywords = _cpp_keywords() if keywords is None else keywords
    return _codebleu_parts(preds, refs, {"weighted_ngram_match": keywords}, grammar)


def _codebleu_from(c: dict[str, float], weights=(0.25, 0.25, 0.25, 0.25)) -> float:
    a, b, g, d = weights
    # the data-flow match is already 1.0 when the references have no data flow (_dataflow_match)
    return a * c["ngram_match"] + b * c["weighted_ngram_match"] + g * c["syntax_match"] + d * c["dataflow_match"]


def codebleu(
    preds: Sequence[str] | str,
    refs: Sequence[str] | str,
    *,
    weights: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25),
    grammar: str = "cuda",
) -> float:
    """CodeBLEU (Ren et al., 2020) with the ``codebleu`` package, C++ rules (CodeBLEU has no CUDA
    language), code tokens and the CUDA grammar by default (see :func:`codebleu_components`);
    in [0, 100]."""
    return 100.0 * _codebleu_from(codebleu_components(preds, refs, grammar=grammar), weights)
