"""Write lightning17_omegaconf206.ckpt (+ .json oracle): a tiny checkpoint laid out like the official Mask3D ones.

The official files were written by PyTorch Lightning 1.7 with torch 1.12, hydra-core 1.0.5 and omegaconf
2.0.x. This script rebuilds that pickle structure without Lightning: ``hyper_parameters = {"config":
DictConfig}`` (hydra composes a struct-mode DictConfig; Mask3D then sets ``general.gpus`` and
``scheduler.scheduler.steps_per_epoch``), ``hparams_name``, ``loops`` progress, a ModelCheckpoint
``callbacks`` state with tensors, ``optimizer_states`` and an ``lr_schedulers`` entry shaped like torch
1.12's ``OneCycleLR.state_dict()``, whose ``anneal_func`` is a bound method (so the scheduler and its
AdamW are pickled as objects). Tensors are tiny, with Mask3D key names.

Run it with omegaconf 2.0.x importable (the version Mask3D pins) and commit both outputs:

    python -m pip install --target /tmp/oc206 --no-deps omegaconf==2.0.6
    PYTHONPATH=/tmp/oc206 .venv/bin/python tests/data/mask3d/make_lightning17_checkpoint.py

The .json holds what a correct reader must return, computed here with omegaconf's own
``OmegaConf.to_container`` (resolve=False and resolve=True), plus the tensors' values, the file's sha256 and
every global its pickle references. tests/test_mask3d_checkpoint.py also imports the builders below to make
the same structure with whatever omegaconf version is installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickletools
import sys
import types
import zipfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
NAME = "lightning17_omegaconf206"

#: The parts of Mask3D's composed config that matter here, with its interpolations, lists, nulls and floats.
CONFIG_YAML = """
general:
  train_mode: false
  seed: null
  checkpoint: checkpoints/scannet200/scannet200_val.ckpt
  num_targets: 201
  topk_per_image: 750
  use_dbscan: true
  dbscan_eps: 0.95
  experiment_name: validation
  save_dir: saved/${general.experiment_name}
  ignore_mask_idx: []
  gpus: null
data:
  voxel_size: 0.02
  in_channels: 3
  num_labels: 200
  ignore_label: 255
  color_mean_std:
    - [0.47793125906962, 0.4303257521323044, 0.3749598901421883]
    - [0.2834475483823543, 0.27566157565723015, 0.27018971370874995]
model:
  _target_: models.Mask3D
  hidden_dim: 128
  dim_feedforward: 1024
  num_queries: 150
  num_heads: 8
  num_decoders: 3
  dropout: 0.0
  pre_norm: false
  hlevels: [0, 1, 2, 3]
  sample_sizes: [200, 800, 3200, 12800, 51200]
  num_classes: ${general.num_targets}
  voxel_size: ${data.voxel_size}
  gauss_scale: 1.0
  config:
    backbone:
      _target_: models.Res16UNet34C
      config: {dialations: [1, 1, 1, 1], conv1_kernel_size: 5, bn_momentum: 0.02}
      in_channels: ${data.in_channels}
      out_channels: ${data.num_labels}
      out_fpn: true
optimizer:
  _target_: torch.optim.AdamW
  lr: 0.0001
scheduler:
  scheduler:
    _target_: torch.optim.lr_scheduler.OneCycleLR
    max_lr: ${optimizer.lr}
    epochs: ${trainer.max_epochs}
    steps_per_epoch: -1
  pytorch_lightning_params: {interval: step}
trainer:
  max_epochs: 601
  check_val_every_n_epoch: 50
callbacks:
  - _target_: pytorch_lightning.callbacks.ModelCheckpoint
    monitor: val_mean_ap_50
    save_top_k: 1
    dirpath: ${general.save_dir}
    filename: "{epoch}-{val_mean_ap_50:.3f}"
  - _target_: pytorch_lightning.callbacks.LearningRateMonitor
"""


def build_config():
    """A struct-mode DictConfig as hydra composes it and Mask3D then edits it."""
    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.merge(OmegaConf.create(CONFIG_YAML),
                          OmegaConf.create({"general": {"checkpoint": "checkpoints/scannet200/scannet200_val.ckpt"}}))
    OmegaConf.set_struct(cfg, True)
    with open_dict(cfg):
        cfg.general.gpus = "0"                               # get_parameters(): from CUDA_VISIBLE_DEVICES
    cfg.scheduler.scheduler.steps_per_epoch = 1201          # configure_optimizers(): len(train_dataloader)
    return cfg


def build_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A few tiny tensors with Mask3D key names and layouts (ME kernel (K, in, out), bias (1, out))."""
    g = torch.Generator().manual_seed(seed)
    return {
        "model.backbone.conv0p1s1.kernel": torch.randn(27, 3, 2, generator=g),
        "model.backbone.bn0.bn.running_var": torch.rand(2, generator=g) + 0.5,
        "model.backbone.bn0.bn.num_batches_tracked": torch.tensor(7),
        "model.mask_features_head.bias": torch.randn(1, 4, generator=g),
        "model.pos_enc.gauss_B": torch.randn(3, 2, generator=g),
        "criterion.empty_weight": torch.tensor([1.0, 1.0, 0.1]),
    }


def _annealing_cos(self, start, end, pct):
    """Named like torch 1.12's OneCycleLR._annealing_cos: a bound method pickles as getattr(obj, __name__)."""
    raise NotImplementedError


def torch112_onecycle_state(optimizer: torch.optim.Optimizer, total_steps: int, step: int) -> dict:
    """torch 1.12's ``OneCycleLR.state_dict()``: its ``__dict__`` minus the optimizer, ``anneal_func`` included.

    torch >= 2.3 no longer stores the bound method, so the object is laid out by hand as 1.12 did it.
    """
    sched = torch.optim.lr_scheduler.OneCycleLR.__new__(torch.optim.lr_scheduler.OneCycleLR)
    up = 0.3 * total_steps - 1
    sched.__dict__.update({
        "optimizer": optimizer, "total_steps": total_steps,
        "_schedule_phases": [
            {"end_step": up, "start_lr": "initial_lr", "end_lr": "max_lr",
             "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
            {"end_step": total_steps - 1, "start_lr": "max_lr", "end_lr": "min_lr",
             "start_momentum": "base_momentum", "end_momentum": "max_momentum"}],
        "anneal_func": types.MethodType(_annealing_cos, sched),
        "cycle_momentum": True, "use_beta1": True, "base_lrs": [4e-6], "last_epoch": step,
        "_step_count": step + 1, "verbose": False, "_get_lr_called_within_step": False, "_last_lr": [1e-4],
    })
    return {k: v for k, v in sched.__dict__.items() if k != "optimizer"}


def build_checkpoint(cfg, state_dict: dict[str, torch.Tensor]) -> dict:
    """The top-level dict PyTorch Lightning 1.7's ``dump_checkpoint`` writes for Mask3D's InstanceSegmentation."""
    params = [torch.nn.Parameter(t.detach().clone().float()) for k, t in state_dict.items() if t.is_floating_point()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sum(p.sum() for p in params).backward()
    opt.step()
    progress = {"ready": 10, "started": 10, "processed": 10, "completed": 10}
    loops = {name: {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": 10},
                    "epoch_loop.batch_progress": {"total": dict(progress), "current": dict(progress),
                                                  "is_last_batch": False}}
             for name in ("fit_loop", "validate_loop", "test_loop", "predict_loop")}
    ckpt_key = ("ModelCheckpoint{'monitor': 'val_mean_ap_50', 'mode': 'max', 'every_n_train_steps': 0, "
                "'every_n_epochs': 1, 'train_time_interval': None, 'save_on_train_epoch_end': False}")
    return {
        "epoch": 549, "global_step": 659_999, "pytorch-lightning_version": "1.7.2",
        "state_dict": dict(state_dict),
        "loops": loops,
        "callbacks": {ckpt_key: {
            "monitor": "val_mean_ap_50", "best_model_score": torch.tensor(0.6161), "best_model_path": "a.ckpt",
            "current_score": torch.tensor(0.6012), "dirpath": "saved/validation",
            "best_k_models": {"a.ckpt": torch.tensor(0.6161)}, "kth_best_model_path": "a.ckpt",
            "kth_value": torch.tensor(0.6161), "last_model_path": "saved/validation/last.ckpt"}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [torch112_onecycle_state(opt, total_steps=601 * 1201, step=659_999)],
        "hparams_name": "kwargs",
        "hyper_parameters": {"config": cfg},
    }


def pickle_globals(path: Path) -> list[str]:
    """Every GLOBAL the checkpoint's data.pkl references, as ``module.name`` (protocol-2 names as pickled)."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    ops = pickletools.genops(io.BytesIO(data))
    return sorted({arg.replace(" ", ".") for op, arg, _ in ops if op.name == "GLOBAL"})


def main() -> None:
    import omegaconf
    from omegaconf import OmegaConf

    if not omegaconf.__version__.startswith("2.0."):
        sys.exit(f"needs omegaconf 2.0.x (the version Mask3D pins), found {omegaconf.__version__}")
    cfg, sd = build_config(), build_state_dict()
    ckpt_path = HERE / f"{NAME}.ckpt"
    torch.save(build_checkpoint(cfg, sd), ckpt_path)
    expected = {
        "omegaconf_version": omegaconf.__version__, "torch_version": torch.__version__,
        "sha256": hashlib.sha256(ckpt_path.read_bytes()).hexdigest(),
        "pickle_globals": pickle_globals(ckpt_path),
        "hyper_parameters_raw": {"config": OmegaConf.to_container(cfg, resolve=False)},
        "hyper_parameters_resolved": {"config": OmegaConf.to_container(cfg, resolve=True)},
        "epoch": 549, "global_step": 659_999, "lightning_version": "1.7.2",
        "other_keys": ["loops", "callbacks", "optimizer_states", "lr_schedulers", "hparams_name"],
        "state_dict": {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape),
                           "values": v.flatten().tolist()} for k, v in sd.items()},
    }
    (HERE / f"{NAME}.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {ckpt_path} ({ckpt_path.stat().st_size} bytes) and {NAME}.json")


if __name__ == "__main__":
    main()
