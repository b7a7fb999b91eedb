"""Compiled SVI steps: :class:`CompiledSVI` records one step as a tensor program and replays it.

The package, one concern per module:

- :mod:`.inputs`: the input structure a program is specialised to, dynamic numbers;
- :mod:`.errors`: :class:`CompileError`, :class:`StructureChangedError` and their messages;
- :mod:`.program`: the :class:`~.program.Program` protocol both backends implement;
- :mod:`.trace`: the ``trace`` / ``trace+inductor`` backend (``make_fx``) and the recording
  context both backends share;
- :mod:`.cuda_graph`: the ``cuda_graph`` backend;
- :mod:`.optim`: optimizer updates as tensor operations;
- :mod:`.cache`: the programs kept and the input structures seen;
- :mod:`.svi`: :class:`CompiledSVI`, which drives them.
"""

from pyro_discrete.infer.compiled.errors import CaptureError, CompileError, StructureChangedError
from pyro_discrete.infer.compiled.program import Program
from pyro_discrete.infer.compiled.svi import CompiledSVI, StepLoss

__all__ = [
    "CaptureError",
    "CompiledSVI",
    "CompileError",
    "Program",
    "StepLoss",
    "StructureChangedError",
]
