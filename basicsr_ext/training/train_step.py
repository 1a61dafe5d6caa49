"""One training step of :class:`basicsr_ext.training.models.ASIDModel`, compiled and (on a GPU) replayed as a CUDA graph.

A step is what BasicSR's ``SRModel.optimize_parameters`` does: forward, loss, backward, the
optimizer update and the EMA update; under DDP the gradients are averaged over the ranks
between backward and update. :class:`TrainStep` runs that same step three ways:

- ``compile=False``: eagerly (:meth:`TrainStep.step`), under ``torch.autocast`` for bf16;
- ``compile=True`` on the CPU: the forward and the loss through ``torch.compile`` (Inductor
  also compiles their backward), the rest as above;
- ``compile=True`` on CUDA: as on the CPU for the first :data:`WARMUP_STEPS` steps (they
  compile and create the optimizer state), then the whole step is captured once as a CUDA
  graph (the recipe of PyTorch's "whole-network capture") and every later step is one
  replay: the batch is copied into the graph's input tensors and the GPU runs forward,
  backward, all-reduce, update and EMA with no Python in between.

Nothing waits for the GPU: losses stay on the device until the Model reads them at
``print_freq``. The learning rate reaches the graph through a device tensor that is refilled
when BasicSR's scheduler changes it (the scheduler and checkpoints keep seeing floats).

Under DDP a compiled step keeps the gradients in one flat buffer (``p.grad`` are views of it):
one kernel zeroes them and one all-reduce averages them, which is why it does not wrap the
network in ``DistributedDataParallel`` (whose per-bucket hooks cannot be replayed). In a single
process the gradients are set to None before each backward instead, so autograd hands each
parameter its new gradient as it is, rather than adding it into a zeroed buffer (one kernel
less per parameter). A CUDA graph is captured that way, so its backward writes the gradients
(replays never accumulate), and from then on ``p.grad`` are the graph's: a batch of another
shape, run eagerly between replays, zeroes them and adds into them, as the flat buffer does.
"""
import logging
from contextlib import nullcontext

import torch
import torch.distributed as dist

#: Values of ``train: precision`` and their autocast dtypes (None: no autocast). No fp16: its
#: gradients need loss scaling, whose overflow checks would stop the GPU every step.
AUTOCAST_DTYPES = {'fp32': None, 'bf16': torch.bfloat16}
#: Steps run before the CUDA graph is captured: they compile, autotune and create the
#: optimizer's state, none of which may happen inside a capture.
WARMUP_STEPS = 3


class TrainStep:
    """Forward, losses, backward, gradient all-reduce, optimizer update and EMA, as one unit.

    Args:
        net (nn.Module): the network (not wrapped in DDP when ``compile`` is on).
        losses (callable): ``losses(output, gt) -> (total, {name: loss})``.
        optimizer (torch.optim.Optimizer): updates ``net``'s parameters (Adam-type optimizers
            are made ``capturable`` for a CUDA graph: :meth:`adopt_optimizer_state`).
        precision (str): 'fp32' or 'bf16' (the forward under ``torch.autocast``).
        compile (bool): compile the forward and losses (and, on CUDA, capture the whole step).
        ema (tuple | None): ``(net_ema, decay)``: after each update ``net_ema``'s parameters
            become ``decay * ema + (1 - decay) * param``, as ``BaseModel.model_ema``.
        distributed (bool): average gradients over the default process group (compiled
            steps only; an eager step leaves that to the DDP wrapper).
    """

    def __init__(self, net, losses, optimizer, precision='fp32', compile=False, ema=None, distributed=False):
        if precision not in AUTOCAST_DTYPES:
            raise ValueError(f'precision must be one of {", ".join(AUTOCAST_DTYPES)}; got {precision!r}')
        self.net, self.losses, self.optimizer = net, losses, optimizer
        self.dtype = AUTOCAST_DTYPES[precision]
        self.compiled = bool(compile)
        self.distributed = distributed and self.compiled
        params = [p for p in net.parameters() if p.requires_grad]
        self.ema = None
        if ema is not None:  # parameters paired in order, as BasicSR's model_ema pairs them by name
            net_ema, decay = ema
            ema_params, net_params = list(net_ema.parameters()), list(net.parameters())
            if [p.shape for p in ema_params] != [p.shape for p in net_params]:
                raise ValueError('the EMA network does not have the network\'s parameters')
            self.ema = (ema_params, net_params, float(decay))
        self.device = params[0].device
        #: capture the step as a CUDA graph (compiled, on a GPU; False after a failed capture)
        self.cuda_graph = self.compiled and self.device.type == 'cuda'
        self.steps = 0
        self.graph = None
        self._forward = torch.compile(self.forward, dynamic=False) if self.compiled else self.forward
        if self.distributed:
            self._flat_grads(params)
        self.adopt_optimizer_state()

    def adopt_optimizer_state(self):
        """Set the optimizer up for this step; again after loading a state saved by another kind of run.

        A CUDA graph needs ``capturable`` groups (the step counts on the device); an eager step
        keeps BasicSR's optimizer as configured, so a state saved by either kind resumes in either.
        """
        capturable = self.cuda_graph
        for group in self.optimizer.param_groups:
            if 'capturable' in group:
                group['capturable'] = capturable
            on_device = capturable or group.get('fused')
            for p in group['params']:
                state = self.optimizer.state.get(p, {})
                if torch.is_tensor(state.get('step')):
                    state['step'] = state['step'].to(p.device if on_device else 'cpu', torch.float32)

    # ------------------------------------------------------------------------ the step
    def forward(self, lq, gt):
        """Network and losses: ``(total, {name: loss})`` (compiled when ``compile`` is on)."""
        with nullcontext() if self.dtype is None else torch.autocast(lq.device.type, dtype=self.dtype):
            output = self.net(lq)
        return self.losses(output.float(), gt)

    def step(self, lq, gt):
        """One whole step, in Python (what the CUDA graph records)."""
        if self.distributed:
            self._grads.zero_()
        else:  # None before the graph exists (it is captured so); its own tensors after
            self.optimizer.zero_grad(set_to_none=self.graph is None)
        total, losses = self._forward(lq, gt)
        total.backward()
        if self.distributed:
            dist.all_reduce(self._grads)
            self._grads.div_(dist.get_world_size())
        self.optimizer.step()
        if self.ema is not None:
            ema_params, net_params, decay = self.ema
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, net_params, 1 - decay)
        return {name: loss.detach() for name, loss in losses.items()}

    def __call__(self, lq, gt):
        """Run one step on a batch; returns ``{name: loss}`` as device tensors, valid until the next
        call (a CUDA graph overwrites them): read them at ``print_freq``."""
        self.steps += 1
        if self.cuda_graph and self.graph is None and self.steps > WARMUP_STEPS:
            self._capture(lq, gt)  # on failure: a warning, and the compiled step without a graph
        if self.graph is not None and lq.shape == self._lq.shape and gt.shape == self._gt.shape:
            self._sync_learning_rates()
            self._lq.copy_(lq, non_blocking=True)
            self._gt.copy_(gt, non_blocking=True)
            self.graph.replay()
            return self._losses
        if self.cuda_graph and self.graph is None:  # warm-up steps: on a side stream, as the capture recipe has them
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                losses = self.step(lq, gt)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return losses
        return self.step(lq, gt)  # eager, on the CPU, or a batch of another shape than the graph's

    # ------------------------------------------------------------------------ plumbing
    def _flat_grads(self, params):
        """Make every ``p.grad`` a view of one zeroed buffer (one zeroing, one all-reduce)."""
        self._grads = torch.zeros(sum(p.numel() for p in params), device=self.device)
        offset = 0
        for p in params:
            p.grad = self._grads[offset:offset + p.numel()].view_as(p)
            offset += p.numel()

    def _capture(self, lq, gt):
        """Record one step into :attr:`graph` (nothing runs: the replay that follows trains on the batch)."""
        self._lq, self._gt = lq.clone(), gt.clone()
        groups = self.optimizer.param_groups
        # the graph reads the learning rate from device memory: BasicSR's schedulers change it
        self._lr_values = [group['lr'] for group in groups]
        self._lr_tensors = [torch.tensor(float(lr), device=self.device) for lr in self._lr_values]
        for group, lr in zip(groups, self._lr_tensors):
            group['lr'] = lr
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize(self.device)
            # thread_local: the DataLoader's pin-memory thread may allocate during the capture
            with torch.cuda.graph(graph, capture_error_mode='thread_local'):
                self._losses = self.step(self._lq, self._gt)
            self.graph = graph
        except RuntimeError as err:  # never lose the run to an optimisation
            logging.getLogger('basicsr').warning(
                f'CUDA graph capture of the training step failed ({str(err).splitlines()[0]}); '
                'running the compiled step without a graph')
            self.cuda_graph = False
        finally:
            for group, lr in zip(groups, self._lr_values):
                group['lr'] = lr

    def _sync_learning_rates(self):
        for i, group in enumerate(self.optimizer.param_groups):
            if group['lr'] != self._lr_values[i]:
                self._lr_tensors[i].fill_(group['lr'])
                self._lr_values[i] = group['lr']
