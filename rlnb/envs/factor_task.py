"""The factor task (card 1 at LM scale): name a nontrivial divisor of N (``"123459="``);
primes, prime factors, the task class and its seeded generator."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from rlnb.envs.task_tools import (
    DIGITS,
    alphabet_of,
    bad_prompt,
    check_knob,
    distinct_pairs,
    operand_range,
    parse_uint,
    resolve_answers,
)
from rlnb.envs.text import TextTask, strip_completion
from rlnb.envs.text_spec import mark_generated, seeded_generator

# Largest bound of the small prime factor (prompts stay quick to generate).
_MAX_PRIME = 10**6


def primes_below(n: int) -> list[int]:
    """Primes ``p < n`` (sieve of Eratosthenes).

    >>> primes_below(20)
    [2, 3, 5, 7, 11, 13, 17, 19]
    """
    if n <= 2:
        return []
    sieve = bytearray([1]) * n
    sieve[0] = sieve[1] = 0
    for p in range(2, math.isqrt(n - 1) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytearray(len(range(p * p, n, p)))
    return [i for i in range(n) if sieve[i]]


def prime_factors(n: int) -> list[int]:
    """Distinct prime factors of ``n >= 2``, ascending (trial division: fine below ~1e12).

    >>> prime_factors(123457), prime_factors(3 * 3 * 7)
    ([123457], [3, 7])
    """
    if n < 2:
        raise ValueError(f"prime_factors needs n >= 2, got {n}")
    out: list[int] = []
    d = 2
    while d * d <= n:
        if n % d == 0:
            out.append(d)
            while n % d == 0:
                n //= d
        d += 1 if d == 2 else 2
    if n > 1:
        out.append(n)
    return out


class FactorTask(TextTask):
    """Name a nontrivial divisor of N (card 1's LM-scale task): prompt ``"N="`` (e.g.
    ``"123459="``), reference answer the smallest prime factor of N.

    Score 1.0 iff the stripped completion is a canonical decimal integer ``d`` (ASCII
    digits only, no sign, no leading zero, at most as many digits as N) with ``1 < d < N``
    and ``N % d == 0``. Any such divisor counts, prime or not; ``"1"``, ``"N"``,
    non-divisors and anything with trailing text (``"3x"``, ``"3 7"``) score 0.0.

    :meth:`sft_examples` pairs each sampled prompt with a *uniformly random distinct prime
    factor* of N (large ones included), not the reference answer: a model that cannot
    test divisibility then learns one answer distribution shared by all N, the strategy
    bandit inside a real task, and RL sharpens it into the pass@k crossover (card 1).
    Alphabet: ``"0123456789="``.

    Every N must be composite (a prime has no divisor ``1 < d < N``) and below 10^12.

    >>> task = FactorTask(["123459="])
    >>> task.answers, task.prime_factors(0)
    (['3'], [3, 7, 5879])
    >>> [task.score("123459=", c) for c in ["3", "21", "5879", "123459", "1", "2", "3x"]]
    [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """

    task_name = "factor"
    ALPHABET = alphabet_of(DIGITS, "=")
    MAX_N_DIGITS = 12

    def __init__(
        self,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        digits: int = 6,
        max_prime: int = 50,
        allow_even_and_5: bool = False,
        seed: int = 0,
    ) -> None:
        prompts = list(prompts)
        self._n = {p: self.parse_prompt(p) for p in prompts}
        self._factors: dict[int, list[int]] = {}
        expected = []
        for p in prompts:
            n = self._n[p]
            spf = smallest_prime_factor(n)
            if spf == n:
                raise ValueError(
                    f"factor prompt {p!r}: {n} is prime, so no completion can score (a divisor d "
                    "with 1 < d < N is needed); use composite N"
                )
            expected.append(str(spf))
        super().__init__(
            prompts, resolve_answers("factor", prompts, answers, expected), alphabet=self.ALPHABET
        )
        self.digits, self.max_prime, self.seed = digits, max_prime, seed
        self.allow_even_and_5 = allow_even_and_5

    @classmethod
    def parse_prompt(cls, prompt: str) -> int:
        """``"123459="`` -> ``123459``; ``ValueError`` for anything else."""
        if (
            isinstance(prompt, str)
            and prompt.endswith("=")
            and len(prompt) <= cls.MAX_N_DIGITS + 1
        ):
            n = parse_uint(prompt[:-1])
            if n is not None and n >= 2:
                return n
        raise bad_prompt("factor", prompt, "123459=")

    def n(self, i: int) -> int:
        """N of prompt ``i``."""
        return self._n[self.prompt(i)]

    def prime_factors(self, i: int) -> list[int]:
        """Distinct prime factors of N of prompt ``i``, ascending (cached)."""
        n = self.n(i)
        if n not in self._factors:
            self._factors[n] = prime_factors(n)
        return self._factors[n]

    def score(self, prompt: str, completion: str) -> float:
        n = self._n.get(prompt)
        if n is None:
            n = self.parse_prompt(prompt)
        text = strip_completion(completion, len(str(n)))
        d = parse_uint(text) if text else None
        return float(d is not None and 1 < d < n and n % d == 0)

    def sft_examples(
        self, n: int, generator: torch.Generator | None = None
    ) -> list[tuple[str, str]]:
        """``n`` pairs ``("N=", p)``: prompts uniform with replacement, ``p`` uniform over the
        distinct prime factors of N (multiplicity ignored: 9 = 3*3 gives "3" only).

        >>> task = FactorTask(["1155="])  # 3 * 5 * 7 * 11
        >>> sorted({c for _, c in task.sft_examples(200, torch.Generator().manual_seed(0))})
        ['11', '3', '5', '7']
        """
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n (number of examples) must be an integer >= 0, got {n!r}")
        idx = torch.randint(self.num_prompts, (n,), generator=generator).tolist()
        u = torch.rand(n, generator=generator, dtype=torch.float64).tolist()
        out = []
        for i, x in zip(idx, u):
            primes = self.prime_factors(i)
            out.append((self._prompts[i], str(primes[min(int(x * len(primes)), len(primes) - 1)])))
        return out

    def metadata_columns(self) -> dict[str, list[Any]]:
        return {
            "n": [self._n[p] for p in self._prompts],
            "prime_factors": [self.prime_factors(i) for i in range(self.num_prompts)],
        }

    def get_config(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "answers": self.answers,
            "digits": self.digits,
            "max_prime": self.max_prime,
            "allow_even_and_5": self.allow_even_and_5,
            "seed": self.seed,
        }


def smallest_prime_factor(n: int) -> int:
    if n % 2 == 0:
        return 2
    d = 3
    while d * d <= n:
        if n % d == 0:
            return d
        d += 2
    return n


@seeded_generator("factor")
def factor(
    num_prompts: int,
    digits: int = 6,
    max_prime: int = 50,
    seed: int = 0,
    allow_even_and_5: bool = False,
) -> FactorTask:
    """``num_prompts`` distinct N drawn uniformly among the ``digits``-digit composites with a
    prime factor below ``max_prime`` that are odd and not divisible by 5 (card 1's task).

    ``allow_even_and_5=True`` drops the last condition: the last digit then reveals the
    factors 2 and 5, RL finds a genuine per-problem gain and the pass@k crossover shrinks
    (card 1). Lengths at the defaults: prompt 7 characters, answer 1-6 (SFT answers may be
    large prime factors).

    How often each answer works: with ``max_prime=50``, 3 divides about 51% of the N and 7
    about 22%. Card 1 quotes 42% and 18%, the shares among *all* 6-digit composites that
    are odd and not divisible by 5 (``max_prime=1000``: every such composite has a prime
    factor below 1000).

    >>> task = factor(3, seed=0)
    >>> task.prompts, task.answers
    (['371493=', '970163=', '246039='], ['3', '23', '3'])
    """
    check_knob("num_prompts", num_prompts, 1)
    check_knob("digits", digits, 1, FactorTask.MAX_N_DIGITS, "digits of N")
    check_knob("max_prime", max_prime, 3, _MAX_PRIME, "bound of the small prime factor")
    if not isinstance(allow_even_and_5, bool):
        raise TypeError(f"allow_even_and_5 must be True or False, got {allow_even_and_5!r}")
    small = [p for p in primes_below(max_prime) if allow_even_and_5 or p not in (2, 5)]
    if not small:
        raise ValueError(
            f"max_prime={max_prime} leaves no allowed prime factor (2 and 5 are excluded unless "
            "allow_even_and_5=True); use max_prime >= 4"
        )
    lo, hi = operand_range(digits)

    def ok(n: int) -> tuple[str, str] | None:
        if n < 4 or (not allow_even_and_5 and (n % 2 == 0 or n % 5 == 0)):
            return None
        for p in small:
            if n % p == 0 and n != p:
                return f"{n}=", str(smallest_prime_factor(n))
        return None

    def everything() -> list[tuple[str, str]]:
        return [item for n in range(lo, hi + 1) if (item := ok(n)) is not None]

    pairs = distinct_pairs(
        num_prompts,
        lambda rng: ok(rng.randint(lo, hi)),
        random.Random(seed),
        "factor",
        everything if digits <= 4 else None,
    )
    task = FactorTask(
        [p for p, _ in pairs],
        [a for _, a in pairs],
        digits=digits,
        max_prime=max_prime,
        allow_even_and_5=allow_even_and_5,
        seed=seed,
    )
    return mark_generated(task, "factor", num_prompts=num_prompts, digits=digits,
                          max_prime=max_prime, seed=seed, allow_even_and_5=allow_even_and_5)

