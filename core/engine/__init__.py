"""The engine: generation over any back end, with stop-word trimming and the prefix state cache.

`engine` holds the Engine and its generation loop, `sampler` the sampling parameters and
presets, `stops` the stop-string scanner, `state_cache` the checkpoints of chat prefixes.
"""

from core.engine.engine import Engine, Reply, ReplyResult
from core.engine.sampler import DEFAULT_PRESET, PRESETS, SamplingParams

__all__ = ["DEFAULT_PRESET", "PRESETS", "Engine", "Reply", "ReplyResult", "SamplingParams"]
