"""ASCII gridworld layouts: the characters, parsing with errors that point at the cell, a
library of named maps (including the combination lock of card 9) and random maps.

A layout is a multi-line string, one character per cell, rows top to bottom::

    S.#.G        S start (exactly one)      # wall
    ..#..        G goal (at least one)      . floor
    K.D..        g decoy goal               L lava
                 K key                      D door (opens only with the key)

Goals, decoys and lava end the episode when entered. Moving into a wall, a closed door or
off the map leaves the agent where it is. Rows and columns are counted from 0 in every
error message, as in ``rows[r][c]``.

>>> rows = parse_layout('''
... S.L
... ..G
... ''')
>>> rows, shortest_distance(rows)
(['S.L', '..G'], 3)
"""

from __future__ import annotations

import textwrap
from collections import deque

import torch

from rlnb.checks import check_int, check_number, check_size

__all__ = [
    "CHARACTERS",
    "LAYOUTS",
    "combination_lock",
    "layout_horizon",
    "named_layout",
    "open_grid",
    "parse_layout",
    "random_layout",
    "shortest_distance",
]

#: Every layout character and what it means.
CHARACTERS: dict[str, str] = {
    "#": "wall",
    ".": "floor",
    "S": "start",
    "G": "goal",
    "g": "decoy goal",
    "L": "lava",
    "K": "key",
    "D": "door",
}
TERMINAL_CHARS = "GgL"
_VALID = " ".join(f"{c} ({m})" for c, m in CHARACTERS.items())
_MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))  # up, right, down, left


def _at(where: str, r: int, c: int) -> str:
    return f"{where}row {r}, column {c}"


def parse_layout(layout: str, *, where: str = "") -> list[str]:
    """Normalise and validate one layout; returns its rows.

    Leading/trailing blank lines, common indentation and trailing spaces are removed.

    Raises:
        ValueError: empty layout, ragged rows, an unknown character, no start or two
            starts, no goal, or a door without a key; the message names row and column.
    """
    if not isinstance(layout, str):
        raise TypeError(f"{where}a layout must be a multi-line string, got {type(layout).__name__}")
    rows = [line.rstrip() for line in textwrap.dedent(layout).strip("\n").split("\n")]
    while rows and not rows[-1]:
        rows.pop()
    if not rows or not rows[0]:
        raise ValueError(f"{where}the layout is empty: write one character per cell, e.g. 'S..G'")
    width = len(rows[0])
    for r, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(
                f"{_at(where, r, min(len(row), width))}: row {r} has {len(row)} characters but "
                f"row 0 has {width}; every row of a layout must have the same width (pad with '#')"
            )
        for c, ch in enumerate(row):
            if ch not in CHARACTERS:
                raise ValueError(f"{_at(where, r, c)}: unknown character {ch!r}; valid: {_VALID}")
    cells = {ch: [(r, c) for r, row in enumerate(rows) for c, x in enumerate(row) if x == ch]
             for ch in CHARACTERS}
    if not cells["S"]:
        raise ValueError(f"{where}no start: the layout needs exactly one 'S'")
    if len(cells["S"]) > 1:
        (r0, c0), (r1, c1) = cells["S"][:2]
        raise ValueError(
            f"{_at(where, r1, c1)}: a second start 'S' (the first is at row {r0}, column {c0}); "
            "a layout has exactly one start"
        )
    if not cells["G"]:
        raise ValueError(f"{where}no goal: the layout needs at least one 'G'")
    if cells["D"] and not cells["K"]:
        r, c = cells["D"][0]
        raise ValueError(f"{_at(where, r, c)}: a door 'D' but no key 'K' anywhere: it can never open")
    return rows


def distances(rows: list[str]) -> list[list[int | None]]:
    """Fewest moves from the start to each cell (None: unreachable). Walls, closed doors
    and the edge block; goals, decoys and lava are entered but not left; picking up the
    key opens doors."""
    H, W = len(rows), len(rows[0])
    start = next((r, c) for r in range(H) for c in range(W) if rows[r][c] == "S")
    best: list[list[int | None]] = [[None] * W for _ in range(H)]
    seen = {(start[0], start[1], rows[start[0]][start[1]] == "K")}
    queue = deque([(start[0], start[1], False, 0)])
    best[start[0]][start[1]] = 0
    while queue:
        r, c, key, d = queue.popleft()
        if rows[r][c] in TERMINAL_CHARS:
            continue
        for dr, dc in _MOVES:
            nr, nc = r + dr, c + dc
            if not (0 <= nr < H and 0 <= nc < W) or rows[nr][nc] == "#":
                continue
            if rows[nr][nc] == "D" and not key:
                continue
            nkey = key or rows[nr][nc] == "K"
            if (nr, nc, nkey) in seen:
                continue
            seen.add((nr, nc, nkey))
            if best[nr][nc] is None or best[nr][nc] > d + 1:
                best[nr][nc] = d + 1
            queue.append((nr, nc, nkey, d + 1))
    return best


def shortest_distance(rows: list[str], *, where: str = "") -> int:
    """Fewest moves from the start to the nearest goal ``G``.

    Raises:
        ValueError: a goal that cannot be reached, pointing at its row and column.
    """
    dist = distances(rows)
    goals = [(r, c) for r, row in enumerate(rows) for c, x in enumerate(row) if x == "G"]
    sr, sc = next((r, c) for r, row in enumerate(rows) for c, x in enumerate(row) if x == "S")
    for r, c in goals:
        if dist[r][c] is None:
            raise ValueError(
                f"{_at(where, r, c)}: the goal is unreachable from the start at row {sr}, column "
                f"{sc}: walls, lava or locked doors cut it off"
            )
    return min(dist[r][c] for r, c in goals)  # type: ignore[type-var]


# --- named layouts --------------------------------------------------------------------


def open_grid(height: int, width: int) -> str:
    """An empty ``height x width`` room: start top-left, goal bottom-right."""
    height, width = check_int(height, "height", 1), check_int(width, "width", 1)
    if height * width < 2:
        raise ValueError(f"an open grid needs at least 2 cells, got {height}x{width}")
    rows = [["."] * width for _ in range(height)]
    rows[0][0], rows[-1][-1] = "S", "G"
    return "\n".join("".join(r) for r in rows)


def combination_lock(length: int) -> str:
    """A combination lock of ``length`` moves: a staircase (right, down, right, ...) with
    lava on every side. Used with ``horizon == length``, exactly one of the ``4**length``
    action sequences reaches the goal: a wrong move falls into lava or, against the edge,
    wastes the one step there was to spare. The random policy succeeds with probability
    ``4**-length``, and the effective horizon is the full horizon.

    >>> print(combination_lock(3))
    S.L
    L.G
    """
    length = check_int(length, "length", 1, meaning="moves to open the lock")
    H, W = 1 + length // 2, 1 + (length + 1) // 2
    rows = [["L"] * W for _ in range(H)]
    r = c = 0
    rows[0][0] = "S"
    for i in range(length):
        if i % 2 == 0:
            c += 1
        else:
            r += 1
        rows[r][c] = "."
    rows[r][c] = "G"
    return "\n".join("".join(x) for x in rows)


#: Named layouts: name -> (layout, default horizon). ``open5`` (T=10) and ``lock8`` (T=8)
#: are card 9's toy pair.
LAYOUTS: dict[str, tuple[str, int]] = {
    "open3": (open_grid(3, 3), 6),
    "open5": (open_grid(5, 5), 10),
    "open7": (open_grid(7, 7), 14),
    "corridor": ("S......G", 10),
    "lock3": (combination_lock(3), 3),
    "lock4": (combination_lock(4), 4),
    "lock5": (combination_lock(5), 5),
    "lock6": (combination_lock(6), 6),
    "lock8": (combination_lock(8), 8),
    "lava_crossing": (
        """
        S.L..
        ..L..
        ..L..
        .....
        ..L.G
        """,
        10,
    ),
    "cliff": (
        """
        .....
        SLLLG
        """,
        8,
    ),
    "decoy": (
        """
        Sg....
        ......
        .....G
        """,
        9,
    ),
    "key_door": (
        """
        S.#.G
        ..#..
        K.D..
        """,
        12,
    ),
    "four_rooms": (
        """
        S..#...
        ...#...
        .......
        ##.###.
        ...#...
        .......
        ...#..G
        """,
        16,
    ),
    "maze": (
        """
        S.#....
        #.#.##.
        ..#..#.
        .##.##.
        .......
        .#####.
        ......G
        """,
        16,
    ),
}


def named_layout(name: str) -> str:
    """The layout string of a named map (see :data:`LAYOUTS`)."""
    if not isinstance(name, str) or name not in LAYOUTS:
        from rlnb.registry import unknown_name_error

        raise unknown_name_error("layout", name, LAYOUTS)
    return textwrap.dedent(LAYOUTS[name][0]).strip("\n")


def layout_horizon(name: str) -> int:
    """Default horizon of a named map."""
    named_layout(name)
    return LAYOUTS[name][1]


def random_layout(
    height: int,
    width: int,
    *,
    wall_density: float = 0.2,
    lava_density: float = 0.05,
    generator: torch.Generator | None = None,
    max_tries: int = 1000,
) -> str:
    """A random map: each cell is a wall with probability ``wall_density``, else lava with
    probability ``lava_density``; start and goal on two distinct free cells, redrawn until
    the goal is reachable. Same generator state, same map.

    >>> print(random_layout(3, 4, generator=torch.Generator().manual_seed(0)))
    L.##
    .G..
    ...S
    """
    height, width = check_int(height, "height", 1), check_int(width, "width", 1)
    if height * width < 2:
        raise ValueError(f"a random layout needs at least 2 cells, got {height}x{width}")
    check_size(height * width, "a random layout", f"height * width = {height} * {width}",
               "use a smaller map", limit=1 << 20)
    for name, p in (("wall_density", wall_density), ("lava_density", lava_density)):
        check_number(p, name, 0, 1, high_open=True, meaning="probability per cell")
    max_tries = check_int(max_tries, "max_tries", 1)
    for _ in range(max_tries):
        u = torch.rand(2, height, width, generator=generator)
        grid = [["#" if u[0, r, c] < wall_density else "L" if u[1, r, c] < lava_density else "."
                 for c in range(width)] for r in range(height)]
        free = [(r, c) for r in range(height) for c in range(width) if grid[r][c] == "."]
        if len(free) < 2:
            continue
        i, j = torch.randperm(len(free), generator=generator)[:2].tolist()
        (sr, sc), (gr, gc) = free[i], free[j]
        grid[sr][sc], grid[gr][gc] = "S", "G"
        rows = ["".join(r) for r in grid]
        if distances(rows)[gr][gc] is not None:
            return "\n".join(rows)
    raise ValueError(
        f"no {height}x{width} layout with a reachable goal in {max_tries} tries: lower "
        f"wall_density ({wall_density}) or lava_density ({lava_density})"
    )
