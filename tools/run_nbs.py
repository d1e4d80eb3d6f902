"""Re-execute notebooks and store their outputs as Jupyter shows them (`make run-nbs`); arguments as `nbdev-test`.

`nbdev-test --save` runs each notebook in a shell that fastprogress (hence fastai) does not take for a notebook, so a
training run would store console progress bars as text, and a live display (`display(..., display_id=True)` then
`.update(...)`) would store one output per update. Before anything imports fastprogress, this
- tells fastprogress it is in a notebook, so that `fit` shows the table of epochs as in Jupyter, and
- makes an update replace the output it updates, as Jupyter does,
then runs `nbdev-test` (its worker processes are forked from this one and inherit both):

    python tools/run_nbs.py --save --flags slow                   # every notebook, slow cells included
    python tools/run_nbs.py --save nbs/05_learner.ipynb           # one chapter
"""
import sys
import fastcore.imports as _fi
from IPython.core.displaypub import CapturingDisplayPublisher

assert 'fastprogress' not in sys.modules, "fastprogress was imported before its notebook mode was set"
_fi.IN_NOTEBOOK = _fi.IN_JUPYTER = True

_publish = CapturingDisplayPublisher.publish
def publish(self, data, metadata=None, source=None, *, transient=None, update=False):
    "An update of a display replaces that display's output (a new display is appended, as before)"
    did = (transient or {}).get('display_id')
    if update and did:
        for o in self.outputs:
            if (o.get('transient') or {}).get('display_id') == did:
                o.update(data=data, metadata=metadata); return
    _publish(self, data, metadata, source, transient=transient, update=update)
CapturingDisplayPublisher.publish = publish

from nbdev.test import nbdev_test

if __name__ == '__main__': nbdev_test()
