"""The programs of a :class:`~pyro_discrete.infer.CompiledSVI`, and the input structures
it has seen (both bounded)."""

from __future__ import annotations

from collections import OrderedDict

from pyro_discrete.infer.compiled.inputs import describe
from pyro_discrete.infer.compiled.program import Program

#: input structures remembered (least recently used forgotten)
MAX_STRUCTURES = 64
#: distinct values of one Python number argument before the warning
WARN_AFTER_VALUES = 8


class ProgramCache:
    """Programs by input structure (the ``max_programs`` most recently used), and the
    structures seen once, with the sample sites of their eager step."""

    def __init__(self, max_programs: int):
        self.max_programs = max_programs
        self.programs: OrderedDict[tuple, Program] = OrderedDict()
        #: input structure -> sample sites of its eager step (bounded, LRU)
        self.seen: OrderedDict[tuple, dict] = OrderedDict()
        #: input structures that run eagerly (fallback="eager")
        self.eager: set[tuple] = set()
        self._values: dict = {}
        self.warned = False

    def get(self, key: tuple) -> Program | None:
        program = self.programs.get(key)
        if program is not None:
            self.programs.move_to_end(key)
        return program

    def put(self, key: tuple, program: Program) -> None:
        self.programs[key] = program
        while len(self.programs) > self.max_programs:
            self.programs.popitem(last=False)

    def drop(self, key: tuple) -> None:
        self.programs.pop(key, None)

    def clear(self) -> None:
        self.programs.clear()

    def see(self, key: tuple, sites: dict, numbers: dict) -> str | None:
        """Remember an eagerly run structure; a warning if a Python number argument keeps
        changing (each value is a structure of its own: nothing gets compiled)."""
        new = key not in self.seen
        self.seen[key] = sites
        self.seen.move_to_end(key)
        while len(self.seen) > MAX_STRUCTURES:
            old, _ = self.seen.popitem(last=False)
            self.eager.discard(old)
        if not new or self.warned:
            return None
        for name, value in numbers.items():
            values = self._values.setdefault(name, set())
            if len(values) <= WARN_AFTER_VALUES:
                values.add(value)
            if len(values) > WARN_AFTER_VALUES:
                self.warned = True
                return (
                    f"CompiledSVI: {describe(name)} of step() has taken {len(values)} "
                    f"different values (e.g. {sorted(values)[:3]}); a Python number is part "
                    "of the input structure, so each value is run eagerly and traced anew "
                    "and nothing is replayed. If it changes every step (an annealing "
                    f"factor, a temperature), declare it dynamic: CompiledSVI(..., "
                    f"dynamic_args=({name!r},)), and it enters the program as a 0-dim "
                    f"tensor. (Only the {MAX_STRUCTURES} most recent structures are kept.)"
                )
        return None
