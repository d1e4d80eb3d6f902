"Validated inputs: each bad input gets a clear error naming the value."
import gzip, pickle, struct
from pathlib import Path
import numpy as np, pytest, torch, torch.nn as nn
from ltat.data import read_idx, read_cifar, load_dataset, lt_dls, CorruptFileError, IDX_IMAGES
from ltat.evaluate import robust_report
from ltat.models import create_model
from ltat.checkpoint import load_weights, CKPT_FORMAT

torch.set_num_threads(1)

def test_truncated_idx(tmp_path):
    f = tmp_path / 'train-images-idx3-ubyte.gz'
    f.write_bytes(gzip.compress(struct.pack('>IIII', 2051, 100, 28, 28) + bytes(500)))
    with pytest.raises(CorruptFileError, match='truncated'): read_idx(f, IDX_IMAGES)

def test_corrupt_gzip(tmp_path):
    f = tmp_path / 'x.gz'; f.write_bytes(gzip.compress(bytes(5000))[:40])
    with pytest.raises(CorruptFileError, match='x.gz'): read_idx(f)

def _cifar(d, labels, cut=None):
    (d / 'cifar-10-batches-py').mkdir(exist_ok=True)
    for f in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:      # CIFAR-10's python format: str keys, protocol 2
        raw = pickle.dumps({'data': np.zeros((len(labels), 3072), np.uint8), 'labels': labels}, protocol=2)
        (d / 'cifar-10-batches-py' / f).write_bytes(raw[:cut] if cut else raw)
    (d / 'cifar-10-batches-py' / 'batches.meta').write_bytes(pickle.dumps({'label_names': [f'c{k}' for k in range(10)]}, protocol=2))

def test_truncated_cifar_pickle(tmp_path):
    _cifar(tmp_path, list(range(10)), cut=200)
    with pytest.raises(CorruptFileError, match='data_batch_1'): read_cifar(tmp_path, 10)

def test_labels_outside_class_range(tmp_path):
    _cifar(tmp_path, [0] * 9 + [12])
    with pytest.raises(CorruptFileError, match='label 12 is outside the class range 0..9'): load_dataset('cifar10', True, tmp_path, download=False, verify=False)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match='labels must lie in'): robust_report(lin, [(torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 5]))], attacks=('clean',), progress=False)

def test_batch_size_larger_than_dataset():
    with pytest.raises(ValueError, match='bs=5000'): lt_dls('synthetic', 10, bs=5000, device='cpu')

def test_eval_subset_larger_than_set():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    b = [(torch.rand(10, 1, 4, 4), torch.randint(0, 3, (10,)))]
    with pytest.raises(ValueError, match='aa_n=50.*10 images'): robust_report(lin, b, attacks=('clean', 'aa'), aa_n=50, progress=False)
    with pytest.raises(ValueError, match='check_n=11'): robust_report(lin, b, attacks=('clean',), checks='full', check_n=11, progress=False)

def test_teacher_or_checkpoint_with_other_class_count(tmp_path):
    torch.save(create_model('small_cnn', 100, in_ch=1, width=8).state_dict(), tmp_path / 'teacher.pth')
    with pytest.raises(ValueError, match='100 classes in the checkpoint, 10 in the model'):
        load_weights(create_model('small_cnn', 10, in_ch=1, width=8), tmp_path / 'teacher.pth')

def test_checkpoint_of_other_architecture(tmp_path):
    sd = create_model('small_cnn', 10, in_ch=1, width=8).state_dict()
    torch.save({'format': CKPT_FORMAT, 'model': sd, 'arch': 'small_cnn', 'n_classes': 10}, tmp_path / 'last.pth')
    with pytest.raises(ValueError, match="architecture 'small_cnn' in the checkpoint, 'preact_resnet18' in the model"):
        load_weights(create_model('preact_resnet18', 10, in_ch=1), tmp_path / 'last.pth')

def test_truncated_checkpoint(tmp_path):
    torch.save(create_model('small_cnn', 10, in_ch=1, width=8).state_dict(), tmp_path / 'w.pth')
    (tmp_path / 'cut.pth').write_bytes((tmp_path / 'w.pth').read_bytes()[:500])
    with pytest.raises(ValueError, match='cut.pth'): load_weights(create_model('small_cnn', 10, in_ch=1, width=8), tmp_path / 'cut.pth')
