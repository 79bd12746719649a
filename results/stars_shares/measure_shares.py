"""Gradient shares of STARS' terms relative to BN at the raw defaults, one synthesize() call each."""
import json, sys, torch
torch.set_num_threads(1)
from baselines.hooks import RegularizerSet
from baselines.registry import REGULARIZERS, SYNTHESIZERS
from baselines.synthesizers.base import SynthesisSetup
from benchmarks.data import load_dataset
from benchmarks.teachers import get_teacher
from benchmarks.zoo.snn import spiking_small_cnn
torch.manual_seed(0)
b = load_dataset("fashion-mnist-28")
teacher, _ = get_teacher("smallcnn", "fashion-mnist-28", b, epochs=5, seed=0, device=torch.device("cpu"))
spec = b.spec
out = {}
for weighting in ("raw", "grad-share"):
  for variant in ("aligned", "seed"):
    for synth, cfg in (("deepinversion", {"batch_size": 64, "iterations": 3}),
                       ("cmi", {"batch_size": 64, "iterations": 3, "bank_size": 512, "n_neg": 128}),
                       ("fast", {"batch_size": 64, "preset": "fast-5", "warmup": 0})):
        torch.manual_seed(0)
        student = spiking_small_cnn(1, 10, 28, neuron_backend="compiled")
        reg = REGULARIZERS.get("stars")({"weighting": weighting, "tar_variant": variant}, name="stars")
        regs = RegularizerSet([reg]); regs.setup(teacher, student, spec)
        s = SYNTHESIZERS.get(synth)(SynthesisSetup(teacher, student, spec, regs), cfg)
        res = s.synthesize()
        g = {k: round(v, 5) for k, v in res.grad_norms.items() if k.startswith("params/")}
        out[f"{synth}/{variant}/{weighting}"] = g
        print(synth, variant, weighting, g, flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
