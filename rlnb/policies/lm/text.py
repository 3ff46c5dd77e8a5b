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
    """Renders and encodes prompts with a tokenizer and checks them against its vocabulary
    and the model's context (``max_position_embeddings`` / ``n_positions`` of ``config``,
    where it has one). Encodings and checks are cached per distinct text.

    Args:
        tokenizer: a Hugging Face tokenizer.
        config: the model's config (for the context length).
        chat_template: None (default) renders every prompt through the tokenizer's chat
            template when it has one (``tokenizer.chat_template`` is set: an instruct
            model's tokenizer) and uses the plain text otherwise; True requires a template;
            False always uses the plain text.
        system_prompt: a system message put before every prompt by the chat template.
            Only with a template: a model without one has no place for it.

    A prompt ``text`` is seen by the model as :meth:`render` gives it: the plain text, or
    ``tokenizer.apply_chat_template([{"role": "system", "content": system_prompt},
    {"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)`` (no
    system message when ``system_prompt`` is None). Plain text is encoded with the
    tokenizer's special tokens (e.g. BOS); a rendered prompt without them, since the
    template writes them itself.

    Footgun: an instruct model fed plain text sees no turn markers and answers as a base
    model would (often by continuing the question); a base model fed a template it was
    never trained on wastes context on markers it has no use for. None picks by the
    tokenizer, which is right for checkpoints saved with their own tokenizer.
    """

    def __init__(self, tokenizer: Any, config: Any, *, chat_template: bool | None = None,
                 system_prompt: str | None = None) -> None:
        if chat_template is not None and not isinstance(chat_template, bool):
            raise TypeError(f"chat_template must be None, True or False, got {chat_template!r}")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise TypeError(
                f"system_prompt must be a str or None, got {type(system_prompt).__name__}")
        self.tokenizer = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat_template and not has_template:
            raise ValueError(
                "chat_template=True but the tokenizer has no chat template "
                "(tokenizer.chat_template is not set); load the instruct model's own "
                "tokenizer, set tokenizer.chat_template to a Jinja template (then "
                "tokenizer.save_pretrained(dir)), or pass chat_template=None for plain text"
            )
        self.uses_chat_template: bool = has_template if chat_template is None else chat_template
        if system_prompt is not None and not self.uses_chat_template:
            why = ("chat_template=False" if chat_template is False
                   else "the model's tokenizer has no chat template")
            raise ValueError(
                f"system_prompt={shorten(system_prompt)} needs a chat template to place it, "
                f"but {why}, so prompts are plain text; put the instruction into the prompt "
                "text itself, or use a tokenizer with a chat template"
            )
        self.system_prompt = system_prompt
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
        if self.uses_chat_template:  # a template that cannot render fails here, not mid-run
            try:
                self.render("")
            except Exception as err:
                raise ValueError(
                    f"the tokenizer's chat template cannot render a "
                    f"{'system and ' if system_prompt is not None else ''}user message: "
                    f"{type(err).__name__}: {err}"
                    + ("; some templates refuse a system message: leave system_prompt=None "
                       "and put the instruction into the prompt text"
                       if system_prompt is not None else
                       "; pass chat_template=False to use plain text")
                ) from err

    def messages(self, text: str) -> list[dict[str, str]]:
        """The chat messages of a prompt: the system message (if any), then ``text``."""
        system = [] if self.system_prompt is None else [
            {"role": "system", "content": self.system_prompt}]
        return [*system, {"role": "user", "content": text}]

    def render(self, text: str) -> str:
        """The prompt as the model reads it: ``text`` through the chat template (with the
        system prompt and the assistant turn's opening), or ``text`` itself."""
        if not self.uses_chat_template:
            return text
        rendered = self.tokenizer.apply_chat_template(
            self.messages(text), add_generation_prompt=True, tokenize=False)
        if not isinstance(rendered, str):  # pragma: no cover - a tokenizer's own override
            raise TypeError(f"apply_chat_template(tokenize=False) returned "
                            f"{type(rendered).__name__}, not the rendered text")
        return rendered

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt as the model reads it (:meth:`render`), cached: the plain
        text with the tokenizer's special tokens (e.g. BOS), or the rendered text without
        them (the template writes its own)."""
        ids = self._cache.get(text)
        if ids is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            if self.uses_chat_template:
                ids = list(self.tokenizer(self.render(text),
                                          add_special_tokens=False)["input_ids"])
            else:
                ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
            self._cache[text] = ids
        return ids

    def check(self, texts: Sequence[str], seqs: Sequence[Sequence[int]],
              labels: Sequence[str], max_new_tokens: int) -> None:
        """Refuse the first prompt (named by its label) with characters the tokenizer
        cannot represent, or too long for the context with ``max_new_tokens`` more. Both
        checks read the prompt as the model does (:meth:`render`, whose ids ``seqs`` are);
        the errors name the prompt as given."""
        ok = self._ok
        for text, ids, label in zip(texts, seqs, labels):
            if text in ok:
                continue
            if self.unk_id is not None and self.unk_id in ids:
                bad = self.unrepresentable(self.render(text))
                own = [ch for ch in bad if ch in text]
                if own:
                    raise ValueError(
                        f"{label} {shorten(text)} holds characters the tokenizer cannot "
                        f"represent: {', '.join(map(repr, own))} (each becomes its unknown token "
                        f"{self.tokenizer.unk_token!r}, so the model would not see the text); "
                        "remove or replace them, or use a tokenizer whose vocabulary has them "
                        "(char_tokenizer(task.alphabet) for a text task)"
                    )
                if bad:
                    where = ("the system prompt or the chat template" if self.system_prompt
                             is not None else "the chat template")
                    raise ValueError(
                        f"{label} {shorten(text)}, rendered through the chat template, holds "
                        f"characters the tokenizer cannot represent: {', '.join(map(repr, bad))}"
                        f", written by {where} (each becomes its unknown token "
                        f"{self.tokenizer.unk_token!r}); change the system prompt, or give the "
                        "tokenizer a template and vocabulary that agree"
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
                    + ("(The count is of the prompt as the chat template renders it"
                       + (", system prompt included" if self.system_prompt is not None else "")
                       + ".) " if self.uses_chat_template else "")
                    + "Use shorter prompts or a smaller max_new_tokens"
                    + (f" (at most {room} for this prompt)" if room >= 1 else "")
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
            # Special-token strings (a template's turn markers) are single tokens, not
            # characters to look up one by one.
            plain = text
            for special in sorted(getattr(self.tokenizer, "all_special_tokens", []) or [],
                                  key=len, reverse=True):
                if special and special != unk_text:
                    plain = plain.replace(special, "")
            pieces = [ch for ch in dict.fromkeys(plain)
                      if unk in self.tokenizer(ch, add_special_tokens=False)["input_ids"]]
        for piece in pieces:
            if piece and piece != unk_text and piece not in bad:
                bad.append(piece)
        return bad
