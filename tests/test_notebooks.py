"""Every notebook in colab/ runs top to bottom offline on smoke settings."""
import glob
import os

import pytest

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), '..', 'colab', '*.ipynb')))


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch):
  import nbclient
  import nbformat
  root = os.path.abspath(os.path.join(os.path.dirname(path), '..'))
  monkeypatch.setenv('SLEEP_JAX_SMOKE', '1')
  monkeypatch.setenv('PYTHONPATH', root + os.pathsep + os.environ.get('PYTHONPATH', ''))
  monkeypatch.setenv('XLA_FLAGS', '')  # the kernel is its own process: one CPU device is enough
  nb = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(nb, timeout=900, kernel_name='python3', resources={'metadata': {'path': root}}).execute()
  errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []) if o.output_type == 'error']
  assert not errors
