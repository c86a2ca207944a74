"""LocalMamba model zoo: importing this package registers every model with timm."""
from .directions import (CANDIDATES, LOCAL_VIM_TINY_DIRECTIONS, LOCAL_VSSM_SMALL_DIRECTIONS,
                         LOCAL_VSSM_TINY_DIRECTIONS, load_directions, save_directions, validate_candidates,
                         validate_directions)
from .local_vim import MultiMamba, VisionMamba
from .local_vmamba import SS2D, VSSM
from .multi_scan import ChannelAttention, MultiScan, search_candidates
from .scan_maps import list_directions, register_direction, unregister_direction

__all__ = ["CANDIDATES", "ChannelAttention", "LOCAL_VIM_TINY_DIRECTIONS", "LOCAL_VSSM_SMALL_DIRECTIONS",
           "LOCAL_VSSM_TINY_DIRECTIONS", "MultiMamba", "MultiScan", "SS2D", "VSSM", "VisionMamba", "list_directions",
           "load_directions", "register_direction", "save_directions", "search_candidates", "unregister_direction",
           "validate_candidates", "validate_directions"]
