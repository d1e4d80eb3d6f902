"""Environment workaround, installed into the virtual environment by `tools/setup.sh` only.

torchvision 0.28 exists only as a CUDA build. Next to a CPU-only torch its compiled ops cannot
load and `import torchvision` dies with "operator torchvision::nms does not exist". Registering the
two op schemas it looks up at import time makes `transforms`, `models` and `datasets` usable.
`torchvision.ops.nms` and `torchvision.io` stay broken; ltat uses neither. Applied only when the
compiled ops are absent, so on a normal (CUDA or matching CPU) install it does nothing."""
import importlib.util, os

def _apply():
    spec = importlib.util.find_spec('torchvision')
    if spec is None or not spec.submodule_search_locations: return
    d = list(spec.submodule_search_locations)[0]
    # a working install ships a loadable _C; we only patch when it is missing or cannot be loaded
    try:
        import torch
        if not hasattr(torch, 'library'): return
        try:
            torch.ops.load_library(next(os.path.join(d, f) for f in os.listdir(d) if f.startswith('_C')))
            return
        except Exception: pass
        lib = torch.library.Library('torchvision', 'DEF')
        lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
        lib.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
        globals()['_lib'] = lib  # keep the registration alive
    except Exception: pass

_apply()
