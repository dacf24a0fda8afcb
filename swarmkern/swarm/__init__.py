"""The Model Swarms search engine: a generic particle swarm over the rows of one flat buffer.

    from swarmkern.swarm import Swarm, SwarmConfig
    result = Swarm(SwarmConfig(max_iters=50), pool_or_points, utility, output_dir="runs/x").run()
    # or drive it: while not swarm.done: swarm.tell(score(swarm.ask().rows)); then swarm.finish()

See search.py for the loop, config.py for every option, collective.py for the multi-process seam.
"""
from .checkpoint import has_checkpoint, load_checkpoint
from .collective import Collective, LocalCollective, block_partition
from .config import SwarmConfig
from .search import Ask, Swarm, SwarmResult, score_rows
from .state import Bookkeeping, SwarmBuffers

__all__ = ["Swarm", "SwarmConfig", "SwarmResult", "Ask", "score_rows", "Collective", "LocalCollective", "block_partition",
           "Bookkeeping", "SwarmBuffers", "has_checkpoint", "load_checkpoint"]
