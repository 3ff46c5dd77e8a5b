"""Text in and out of a policy: prompts as token ids (cached), the checks that refuse,
before any sampling, a prompt the model cannot answer faithfully, and completions decoded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def shorten(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def plain_fast_tokenizer(tokenizer: Any) -> Any:
    """The ``tokenizers`` object behind a Hugging Face fast tokenizer whose decoding is
    exactly ``backend.decode`` (the stock ``_decode``, no clean-up of spaces), else None."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # pragma: no cover - older transformers
        return None
    if (isinstance(tokenizer, TokenizersBackend)
            and type(tokenizer)._decode is TokenizersBackend._decode
            and not tokenizer.clean_up_tokenization_spaces):
        return tokenizer._tokenizer
    return None


def decode_rows(tokenizer: Any, actions: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Each row's masked tokens as text (special tokens removed)."""
    lengths = mask.sum(1).tolist()
    rows = [r[:k] for r, k in zip(actions.tolist(), lengths)]
    backend = plain_fast_tokenizer(tokenizer)
    if backend is not None:  # what batch_decode does, without its per-id type checks
        return [backend.decode(r, skip_special_tokens=True) for r in rows]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


class PromptChecker:
    """Encodes prompts with a tokenizer (its special tokens, e.g. BOS, included) and checks
    them against its vocabulary and the model's context (``max_position_embeddings`` /
    ``n_positions`` of ``config``, where it has one). Both are cached per distinct text."""

    def __init__(self, tokenizer: Any, config: Any) -> None:
        self.tokenizer = tokenizer
        self.max_positions = None
        self.context_source = None
        for key in ("max_position_embeddings", "n_positions"):
            value = getattr(config, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                self.max_positions, self.context_source = value, key
                break
        self._cache: dict[str, list[int]] = {}
        self._ok: set[str] = set()  # prompts whose tokens are all in the vocabulary
        unk = getattr(tokenizer, "unk_token_id", None)
        self.unk_id = int(unk) if isinstance(unk, int) else None

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt, cached."""
        ids = self._cache.get(text)
        if ids is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
            self._cache[text] = ids
        return ids

    def check(self, texts: Sequence[str], seqs: Sequence[Sequence[int]],
              labels: Sequence[str], max_new_tokens: int) -> None:
        """Refuse the first prompt (named by its label) with characters the tokenizer
        cannot represent, or too long for the context with ``max_new_tokens`` more."""
        ok = self._ok
        for text, ids, label in zip(texts, seqs, labels):
            if text in ok:
                continue
            if self.unk_id is not None and self.unk_id in ids:
                bad = self.unrepresentable(text)
                if bad:
                    raise ValueError(
                        f"{label} {shorten(text)} holds characters the tokenizer cannot "
                        f"represent: {', '.join(map(repr, bad))} (each becomes its unknown token "
                        f"{self.tokenizer.unk_token!r}, so the model would not see the text); "
                        "remove or replace them, or use a tokenizer whose vocabulary has them "
                        "(char_tokenizer(task.alphabet) for a text task)"
                    )
            if len(ok) > 100_000:
                ok.clear()
            ok.add(text)
        if self.max_positions is None:
            return
        for text, ids, label in zip(texts, seqs, labels):
            if len(ids) + max_new_tokens > self.max_positions:
                room = self.max_positions - len(ids)
                raise ValueError(
                    f"{label} {shorten(text)} has {len(ids)} tokens; with max_new_tokens="
                    f"{max_new_tokens} that is {len(ids) + max_new_tokens} positions, more than "
                    f"the model's context of {self.max_positions} ({self.context_source}). "
                    "Use shorter prompts or a smaller max_new_tokens"
                    + (f" (at most {room - 1} for this prompt)" if room > 1 else "")
                )

    def unrepresentable(self, text: str) -> list[str]:
        """The distinct characters of ``text`` that the tokenizer maps to its unknown token
        (a literal unknown-token string in the text is not one of them)."""
        unk, unk_text = self.unk_id, getattr(self.tokenizer, "unk_token", None)
        bad: list[str] = []
        try:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            pieces = [text[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])
                      if i == unk]
        except (NotImplementedError, TypeError, ValueError, KeyError):  # a slow tokenizer
            pieces = [ch for ch in dict.fromkeys(text)
                      if unk in self.tokenizer(ch, add_special_tokens=False)["input_ids"]]
        for piece in pieces:
            if piece and piece != unk_text and piece not in bad:
                bad.append(piece)
        return bad
