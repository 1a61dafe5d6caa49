"""``ASIDModel``: BasicSR's SRModel with ASID's fast training step, tested as the ASID authors did.

With ``model_type: ASIDModel`` an option file gets, on top of SRModel:

- A fast training step (:mod:`basicsr_ext.training.train_step`). With::

      train:
        compile: true     # forward, loss and backward through torch.compile; on a GPU the
                          # whole step (update and EMA included) replayed as one CUDA graph
        precision: bf16   # fp32 (default) or bf16: the forward under torch.autocast
        kernels: true     # default; compiled bf16 steps on a GPU run the SLA/SGA layers' attention
                          # through ASID's fused Triton kernels, forward and backward (asid_arch.kernels)

  the step computes what SRModel's computes (tested against it), and losses stay on the
  device until ``print_freq``. Under DDP a compiled step averages the gradients itself (one
  all-reduce inside the graph) instead of wrapping the network in DistributedDataParallel.
  Validation runs the plain network in fp32.

- Tiled testing. The ASID authors evaluated with 64x64 LR tiles overlapping by 24 px,
  averaging the overlaps. With::

      val:
        tile: 64          # LR tile size; leave out (or ~) to upscale whole images
        tile_overlap: 24

  BasicSR's validation and ``basicsr test`` run their loop (:func:`asid_arch.tiling.tiled_forward`).
- Bicubic beside the network. Every validation also scores MATLAB-bicubic upscaling of the
  same LR images with the same metrics (:mod:`basicsr_ext.common.results`) and logs both on one
  line; ``basicsr test`` ends with the table of all its sets, also written to
  ``results/<name>/results.md`` and ``results.csv``, and with one comparison image per set,
  ``results/<name>/compare_<set>.png``: the crops where the network gains most over bicubic,
  ground truth | bicubic | network, labelled with their PSNR (:mod:`basicsr_ext.common.compare`).
- A readable training terminal: the network's module tree goes to the log file only (one
  summary line on the terminal); training ends with where the latest model is and its
  validation figures against bicubic, without validating the same weights a second time.
"""
import os
import time
from collections import OrderedDict

import torch
import torch.distributed as dist
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, tensor2img
from basicsr.utils.registry import MODEL_REGISTRY

from asid_arch.kernels import available as fused_kernels_available
from asid_arch.kernels import use_fused_kernels
from asid_arch.tiling import tiled_forward
from basicsr_ext.common import results
from basicsr_ext.common.compare import ComparisonSheet
from basicsr_ext.patches.pipeline import log_to_file_only
from basicsr_ext.training.train_step import AUTOCAST_DTYPES, TrainStep


@MODEL_REGISTRY.register()
class ASIDModel(SRModel):
    """SRModel with a compiled training step (``train.compile``, ``train.precision``), testing tile by
    tile when ``val.tile`` is set, and reporting bicubic beside the network."""

    @classmethod
    def check_options(cls, opt, is_train=True, launcher='none'):
        """ValueError, in one line naming the option, for ``train.compile`` / ``train.precision`` values this
        Model cannot run (the option checker calls it before the run's folder exists)."""
        train = opt.get('train') or {}
        if not is_train:
            return
        for key in ('compile', 'kernels'):
            if not isinstance(train.get(key, False), bool):
                raise ValueError(f'train.{key}: must be true or false, got {train[key]!r}')
        if train.get('precision') == 'fp16':
            raise ValueError('train.precision: fp16 would train without loss scaling (its gradients can '
                             'underflow): use bf16, or fp32')
        if (train.get('precision') or 'fp32') not in AUTOCAST_DTYPES:  # null: fp32, as the Model reads it
            raise ValueError(f'train.precision: must be one of {", ".join(AUTOCAST_DTYPES)}, '
                             f'got {train["precision"]!r}')
        gpus = opt.get('num_gpu', 'auto')
        if gpus == 'auto':
            gpus = torch.cuda.device_count()
        if train.get('compile') and launcher == 'none' and isinstance(gpus, int) and gpus > 1:
            # BasicSR gives num_gpu > 1 without a launcher to DataParallel, whose threads a compiled step cannot use
            raise ValueError(f'train.compile: {gpus} GPUs without a launcher would be DataParallel, which '
                             f'cannot run a compiled step: launch torchrun --nproc_per_node={gpus} -m basicsr_ext '
                             f'train ... --launcher pytorch (or pick one GPU with CUDA_VISIBLE_DEVICES=0)')

    def __init__(self, opt):
        self.figures = {}  # dataset name -> {'set', 'images', 'network', 'bicubic', 'iter'}
        self.sheets = {}  # dataset name -> ComparisonSheet (basicsr test)
        self.sheet = None  # the one being filled by the validation running now
        self._bicubic = {}  # dataset name -> bicubic scores (they never change)
        self.last_iter = 0  # the last training iteration run
        train = opt.get('train') or {}
        self.compile = bool(opt.get('is_train') and train.get('compile'))
        super().__init__(opt)

    # ---------------------------------------------------------------------------- training step
    def model_to_device(self, net):
        """A compiled step averages gradients itself, so under DDP the network is not wrapped;
        rank 0's weights are broadcast, as DistributedDataParallel's constructor does."""
        if not (self.compile and self.opt['dist']):
            return super().model_to_device(net)
        net = net.to(self.device)
        with torch.no_grad():
            for tensor in list(net.parameters()) + list(net.buffers()):
                dist.broadcast(tensor, src=0)
        return net

    def fuse_kernels(self):
        """Switch the trained network's SLA/SGA layers to the fused kernels (:mod:`asid_arch.kernels`)
        where they serve: a compiled bf16 step on a GPU with Triton, unless ``train.kernels: false``.
        Returns the number of layers switched (the keys and the function stay the same); where an
        option file asks for them and they cannot serve, the log says why."""
        train = self.opt['train']
        if not train.get('kernels', True):
            return 0
        unused = ('train: compile is off' if not self.compile
                  else 'train: precision is not bf16' if train.get('precision') != 'bf16'
                  else None if fused_kernels_available(self.device, torch.bfloat16)
                  else 'they need a CUDA GPU of compute capability 8.0 or later and Triton 3')
        fused = 0 if unused else use_fused_kernels(self.get_bare_model(self.net_g))
        if fused:
            get_root_logger().info(f'train.kernels: {fused} SLA/SGA layers run the fused attention kernels '
                                   '(train: kernels: false turns them off)')
        elif unused and 'kernels' in train:
            get_root_logger().info(f'train.kernels: not used ({unused})')
        return fused

    def init_training_settings(self):
        super().init_training_settings()
        self.fused_layers = self.fuse_kernels()
        ema = (self.net_g_ema, self.ema_decay) if self.ema_decay > 0 else None
        self.train_step = TrainStep(self.net_g, self.losses, self.optimizer_g,
                                    precision=self.opt['train'].get('precision') or 'fp32', compile=self.compile,
                                    ema=ema, distributed=bool(self.opt['dist']))

    def losses(self, output, gt):
        """SRModel's losses: ``(total, {name: loss})``."""
        total, terms = 0, OrderedDict()
        if self.cri_pix:
            terms['l_pix'] = self.cri_pix(output, gt)
            total = total + terms['l_pix']
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(output, gt)
            for name, term in (('l_percep', l_percep), ('l_style', l_style)):
                if term is not None:
                    terms[name] = term
                    total = total + term
        return total, terms

    def optimize_parameters(self, current_iter):
        self.last_iter = current_iter
        first = self.train_step.steps == 0
        started = time.perf_counter()
        self.log_dict = self.train_step(self.lq, self.gt)  # device tensors: no wait for the GPU here
        if first and self.compile:  # start-up cost: compilation, or loading it from the compile cache
            get_root_logger().info(f'Iteration {current_iter}, the first of this process, compiled and ran in '
                                   f'{time.perf_counter() - started:.1f} s')

    def get_current_log(self):
        """The losses of the last step, averaged over the ranks, read from the device (at ``print_freq``)."""
        return self.reduce_loss_dict(self.log_dict)

    # ---------------------------------------------------------------------------- testing
    def tile_options(self):
        """(tile, overlap) from the ``val`` options, or None for whole-image inference."""
        val = self.opt.get('val') or {}
        tile = val.get('tile')
        if not tile:
            return None
        return int(tile), int(val.get('tile_overlap', 0) or 0)

    def test(self):
        """Upscale ``self.lq`` whole or tile by tile (``val.tile``) with the bare network: under DDP rank 0
        validates alone, and the DistributedDataParallel wrapper's forward would first broadcast ASID's
        buffers, a collective the other ranks never join (a crash or a hang at the last iteration)."""
        ema = hasattr(self, 'net_g_ema')
        net = self.get_bare_model(self.net_g_ema if ema else self.net_g)
        tiling = self.tile_options()
        was_training = net.training
        net.eval()
        with torch.no_grad():
            if tiling is None:
                self.output = net(self.lq)
            else:
                self.output = tiled_forward(net, self.lq, self.opt['scale'], *tiling)
        if was_training and not ema:
            net.train()

    def network_name(self):
        return str(self.opt['network_g']['type']).replace('_', '-')

    def feed_data(self, data):
        super().feed_data(data)
        self.lq_path = (data.get('lq_path') or [None])[0]

    def get_current_visuals(self):
        """SRModel's; during ``basicsr test`` the image also goes to the set's comparison sheet."""
        visuals = super().get_current_visuals()
        if self.sheet is not None and 'gt' in visuals:
            name = os.path.splitext(os.path.basename(self.lq_path or 'image'))[0]
            self.sheet.add(name, *(tensor2img([visuals[k]]) for k in ('lq', 'result', 'gt')))
        return visuals

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        name = dataloader.dataset.opt['name']
        metrics = self.opt['val'].get('metrics') or {}
        if not self.opt['is_train']:
            psnr = next((m for m in metrics.values() if m.get('type') == 'calculate_psnr'), None)
            self.sheet = self.sheets[name] = ComparisonSheet(self.network_name(), psnr, self.opt['scale'])
        try:
            super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            self.sheet = None
        if not metrics:
            return
        if name not in self._bicubic:
            self._bicubic[name] = results.bicubic_scores(dataloader.dataset, metrics, self.opt['scale'])
        self.figures[name] = {'set': name, 'images': len(dataloader.dataset), 'iter': current_iter,
                              'network': dict(self.metric_results), 'bicubic': self._bicubic[name]}
        logger = get_root_logger()
        logger.info(f'{name}: {self.network_name()} '
                    + results.compare(self.metric_results, self._bicubic[name], metrics))
        if not self.opt['is_train'] and len(self.figures) == len(self.opt['datasets']):
            self.report()

    def run_description(self):
        tiling = self.tile_options()
        if tiling is None:
            return 'whole images'
        return f'tiles of {tiling[0]} px, overlap {tiling[1]} px'

    def report(self):
        """Log the table of every tested set and write it under ``results/<name>/``."""
        metrics = self.opt['val']['metrics']
        network = self.network_name()
        title = (f'{self.opt["name"]}: {network} x{self.opt["scale"]}, {self.run_description()}; '
                 f'{results.describe_metrics(metrics)}; bicubic: MATLAB-compatible, from the same LR')
        rows = list(self.figures.values())
        paths = results.write_tables(self.opt['path']['results_root'], title, rows, network, metrics)
        sheets = self.write_sheets()
        get_root_logger().info(f'{title}\n\n{results.markdown_table(rows, network, metrics)}\n\n'
                               f'Written to {_shown(paths[0])} and {_shown(paths[1])}'
                               + (f'; crops beside bicubic: {", ".join(_shown(p) for p in sheets)}' if sheets else ''))

    def write_sheets(self):
        """``compare_<set>.png`` beside the tables, for each set tested; returns their paths."""
        import cv2
        paths = []
        for name, sheet in self.sheets.items():
            image = sheet.image()
            if image is None:
                continue
            paths.append(os.path.join(self.opt['path']['results_root'], f'compare_{name}.png'))
            if not cv2.imwrite(paths[-1], image):
                raise OSError(f'{paths[-1]}: cannot write the comparison image')
        return paths

    # ---------------------------------------------------------------------------- training
    def print_network(self, net):
        """BasicSR logs the module tree (~590 lines for ASID) to the terminal; here it goes to the log file only."""
        bare = self.get_bare_model(net)
        params = sum(p.numel() for p in bare.parameters())
        logger = get_root_logger()
        logger.info(f'Network: {type(bare).__name__}, with parameters: {params:,d} (structure in the log file)')
        log_to_file_only(logger, str(bare))

    def resume_training(self, resume_state):
        self.last_iter = resume_state['iter']
        super().resume_training(resume_state)
        self.train_step.adopt_optimizer_state()

    def save(self, epoch, current_iter):
        super().save(epoch, current_iter)
        if current_iter == -1:  # BasicSR's train_pipeline: the latest model, after the last iteration
            self.saved_latest = os.path.join(self.opt['path']['models'], 'net_g_latest.pth')
            get_root_logger().info(f'Latest model (iteration {self.last_iter}): {_shown(self.saved_latest)}')

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        """BasicSR's train_pipeline validates once more after saving the latest model, labelled with an
        iteration count past the end (one more per remaining epoch): the same weights as the last
        validation when that was at the last iteration. Here the end is validated only if it was not
        yet, under the true iteration, and then summed up."""
        if not getattr(self, 'saved_latest', None):
            return super().validation(dataloader, current_iter, tb_logger, save_img)
        name = dataloader.dataset.opt['name']
        if (self.figures.get(name) or {}).get('iter') != self.last_iter:
            super().validation(dataloader, self.last_iter, tb_logger, save_img)
        row = self.figures.get(name)
        if row is not None:
            get_root_logger().info(
                f'{_shown(self.saved_latest)}: {name} at iteration {self.last_iter}: {self.network_name()} '
                + results.compare(row['network'], row['bicubic'], self.opt['val']['metrics']))


def _shown(path):
    """``path`` relative to the current directory when it is below it (as users typed it)."""
    rel = os.path.relpath(path)
    return path if rel.startswith('..') else rel
