"""ASIDModel's training step (``train: compile/precision``) computes SRModel's step.

The eager step is the definition (zero grads, forward, L1, backward, AdamW, EMA, as BasicSR's
``SRModel.optimize_parameters`` and ``BaseModel.model_ema``); the compiled step must give the
same losses, parameters and EMA over several steps. The cheap checks compile through
AOTAutograd with the ``aot_eager`` backend (the same graph capture, joint forward/backward
graph and functionalisation as Inductor, without generating C++); ``pytest -m slow`` runs
Inductor itself. On a GPU, the CUDA-graph replay is tested against the eager step here and
timed by ``basicsr benchmark --train``.
"""
import copy
import glob
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from asid_arch import ASID  # first: patches BasicSR for this stack before it is imported
from basicsr.losses import build_loss  # noqa: I001
from basicsr_ext.training import train_step as train_step_module
from basicsr_ext.training.train_step import TrainStep
from conftest import compile_with_backend, cpu_ranks_env, free_port, tiny_options, write_options


def small_net(num_groups=2):
    """A seeded small x2 ASID; two groups by default, so that a sharing group is in the graph."""
    torch.manual_seed(0)
    return ASID(upscale=2, num_groups=num_groups, num_feat=16, value_range=(-1, 1))


def batches(n, size=16, scale=2):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(2, 3, size, size, generator=g), torch.rand(2, 3, size * scale, size * scale, generator=g))
            for _ in range(n)]


def adamw(net):
    return torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4, betas=(0.9, 0.999))


def l1_losses():
    l1 = build_loss({'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'})
    return lambda output, gt: (l1(output, gt), {'l_pix': l1(output, gt)})


def srmodel_steps(data, decay=0.9):
    """What BasicSR's SRModel does, written out: its optimize_parameters and model_ema."""
    net, ema = small_net(), small_net()
    opt, l1 = adamw(net), build_loss({'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'})
    losses = []
    for lq, gt in data:
        opt.zero_grad()
        loss = l1(net(lq), gt)
        loss.backward()
        opt.step()
        for p_ema, p in zip(ema.parameters(), net.parameters()):
            p_ema.data.mul_(decay).add_(p.data, alpha=1 - decay)
        losses.append(float(loss.detach()))
    return losses, net, ema


def train_step_steps(data, decay=0.9, device='cpu', lr_at=None, **kwargs):
    """Train a fresh small network over ``data`` with TrainStep; ``lr_at``: {step index: new lr}
    (as BasicSR's scheduler sets it between steps)."""
    net, ema = small_net().to(device), small_net().to(device)
    step = TrainStep(net, l1_losses(), adamw(net), ema=(ema, decay), **kwargs)
    losses = []
    for i, (lq, gt) in enumerate(data):
        for group in step.optimizer.param_groups:
            group['lr'] = (lr_at or {}).get(i, group['lr'])
        # read now: a CUDA graph's loss tensor is overwritten by the next replay
        losses.append(float(step(lq.to(device), gt.to(device))['l_pix']))
    return losses, net.cpu(), ema.cpu(), step


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile as TrainStep calls it, through AOTAutograd without code generation."""
    yield compile_with_backend(monkeypatch, 'aot_eager')
    torch._dynamo.reset()


def assert_same_training(a, b, atol):
    (losses_a, net_a, ema_a), (losses_b, net_b, ema_b) = a[:3], b[:3]
    assert losses_a == pytest.approx(losses_b, abs=atol)
    for (name, pa), pb in zip(net_a.named_parameters(), net_b.parameters()):
        assert torch.allclose(pa, pb, atol=atol, rtol=0), name
    for (name, pa), pb in zip(ema_a.named_parameters(), ema_b.parameters()):
        assert torch.allclose(pa, pb, atol=atol, rtol=0), name


def test_the_eager_step_is_srmodels_step():
    data = batches(4)
    assert_same_training(train_step_steps(data), srmodel_steps(data), atol=1e-6)


def test_the_compiled_step_trains_as_the_eager_step_with_each_steps_own_gradients(aot_eager):
    # one compilation (the costly part on a CPU) serves both checks
    data = batches(4)
    compiled = train_step_steps(data, compile=True)
    assert aot_eager == [{'dynamic': False}]  # one static graph for the fixed patch size
    # the same losses, weights and EMA as the eager step over several steps
    assert_same_training(compiled, train_step_steps(data), atol=2e-5)

    _, net, _, step = compiled
    losses = step(*batches(1)[0])
    # losses stay device tensors: the step never waits for the device (the Model reads them at print_freq)
    assert list(losses) == ['l_pix'] and isinstance(losses['l_pix'], torch.Tensor) and losses['l_pix'].dim() == 0
    # in one process, no flat buffer (only DDP's one all-reduce needs it): autograd hands each
    # parameter its gradient as computed, in a tensor of its own
    params = list(net.parameters())
    assert len({p.grad.untyped_storage().data_ptr() for p in params}) == len(params)
    # each step's gradients are its own, not accumulated over the steps (the losses above would
    # drift otherwise); here directly: one more step on a batch gives that batch's gradient
    lq, gt = batches(1)[0]
    reference = copy.deepcopy(net)
    reference.zero_grad()
    l1_losses()(reference(lq), gt)[0].backward()
    step.optimizer.step = lambda: None  # keep the weights, look at the gradients
    step(lq, gt)
    for p, q in zip(net.parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5)


@pytest.mark.slow
def test_the_inductor_compiled_step_gives_the_eager_steps_losses_and_weights():
    # Inductor's generated C++ (a minute or more on a 2-core CPU): pytest -m slow
    torch._dynamo.reset()
    data = batches(3)
    assert_same_training(train_step_steps(data, compile=True), train_step_steps(data), atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_on_a_gpu_the_whole_step_replays_as_one_cuda_graph_and_trains_as_the_eager_step():
    # Inductor, then the capture after the warm-up steps, then replays; the learning rate changes
    # midway (a scheduler milestone) and must reach the graph; a batch of another shape between
    # two replays runs eagerly, and the replay after it trains and leaves its gradients in p.grad.
    torch._dynamo.reset()
    data = batches(9)
    data[7] = batches(1, size=24)[0]
    graph = train_step_steps(data, device='cuda', compile=True, lr_at={6: 2.5e-4})
    eager = train_step_steps(data, device='cuda', lr_at={6: 2.5e-4})
    assert graph[3].graph is not None and graph[3].steps == 9
    assert graph[0] == pytest.approx(eager[0], rel=1e-3)
    for p, q in zip(graph[1].parameters(), eager[1].parameters()):
        # Adam normalises each update, so an element whose gradient is ~0 may move by ~lr either way
        assert (p - q).abs().max() < 5e-3 and (p - q).abs().mean() < 1e-4
    # p.grad hold the last step's gradients (a replay's), not those of the eager step before it
    grads, eager_grads = (torch.cat([p.grad.flatten() for p in run[1].parameters()]) for run in (graph, eager))
    assert (grads - eager_grads).norm() <= 0.05 * eager_grads.norm()


def test_bf16_step_trains_the_fp32_weights_close_to_fp32():
    data = batches(3)
    bf16 = train_step_steps(data, precision='bf16')
    fp32 = train_step_steps(data)
    assert all(p.dtype == torch.float32 for p in bf16[1].parameters())  # autocast: the weights stay fp32
    assert bf16[0] == pytest.approx(fp32[0], rel=0.05)


def test_a_state_saved_by_a_cuda_graph_run_resumes_in_an_eager_cpu_run():
    net = small_net()
    opt = adamw(net)
    data = batches(2)
    TrainStep(net, l1_losses(), opt)(*data[0])
    saved = copy.deepcopy(opt.state_dict())
    saved['param_groups'][0]['capturable'] = True  # as the GPU run saved it
    resumed = adamw(net)
    resumed.load_state_dict(saved)
    step = TrainStep(net, l1_losses(), resumed)
    step.adopt_optimizer_state()  # what ASIDModel.resume_training does after loading
    assert resumed.param_groups[0]['capturable'] is False
    step(*data[1])  # an AdamW step with capturable=True on CPU tensors would raise


@pytest.mark.parametrize('precision', ['fp8', 'fp16'])  # fp16 would need loss scaling
def test_unknown_precision_is_refused_with_the_choices(precision):
    net = small_net()
    with pytest.raises(ValueError, match=f"precision must be one of fp32, bf16; got '{precision}'"):
        TrainStep(net, l1_losses(), adamw(net), precision=precision)


DDP_SCRIPT = textwrap.dedent('''
    import os, sys
    import torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[1])
    import test_train_step as t
    cuda = sys.argv[2] == 'cuda'
    dist.init_process_group('nccl' if cuda else 'gloo')
    rank = dist.get_rank()
    device = f'cuda:{rank}' if cuda else 'cpu'
    if cuda:
        torch.cuda.set_device(rank)
    else:  # the same graphs through AOTAutograd, without generating C++ (fast on a CPU)
        real_compile = torch.compile
        t.train_step_module.torch.compile = lambda fn, **kw: real_compile(fn, backend='aot_eager', **kw)
    data = [(lq.to(device), gt.to(device)) for lq, gt in t.batches(12)[rank::2]]  # each rank its own batches

    # one group: the averaging over the ranks is the same for any network, and half the
    # compilation of two (the sharing group's graph is compared with eager in-process)
    # reference: BasicSR's way, the eager step inside DistributedDataParallel
    net = t.small_net(num_groups=1).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    step = t.TrainStep(ddp, t.l1_losses(), t.adamw(net))
    for lq, gt in data:
        step(lq, gt)
    # ASIDModel's compiled step: no wrapper, gradients averaged by one all-reduce of the flat
    # buffer (on a GPU inside the CUDA graph, replayed after the warm-up steps)
    net2 = t.small_net(num_groups=1).to(device)
    step2 = t.TrainStep(net2, t.l1_losses(), t.adamw(net2), compile=True, distributed=True)
    for lq, gt in data:
        step2(lq, gt)
    assert all(p.grad.untyped_storage().data_ptr() == step2._grads.untyped_storage().data_ptr()
               for p in net2.parameters())  # the flat buffer that one all-reduce averages
    diff = [(p - q).abs() for p, q in zip(net.parameters(), net2.parameters())]
    worst, mean = max(float(d.max()) for d in diff), max(float(d.mean()) for d in diff)
    print(f'rank {rank} max diff {worst:.2e} mean {mean:.2e} graph {step2.graph is not None}', flush=True)
    assert (worst < 2e-5) if not cuda else (worst < 5e-3 and mean < 1e-4 and step2.graph is not None), worst
    dist.destroy_process_group()
''')


def run_two_ranks(tmp_path, device):
    script = tmp_path / 'ddp_step.py'
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, 'MASTER_ADDR': '127.0.0.1', 'OMP_NUM_THREADS': '1'}
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                             f'--master_port={free_port()}', str(script), os.path.dirname(__file__), device],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert 'rank 0 max diff' in result.stdout and 'rank 1 max diff' in result.stdout
    print(result.stdout)


def test_compiled_step_under_two_ranks_averages_gradients_as_ddp_does(tmp_path):
    run_two_ranks(tmp_path, 'cpu')


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs 2 CUDA GPUs')
def test_on_two_gpus_the_graph_step_all_reduces_inside_the_graph_as_ddp_does(tmp_path):
    run_two_ranks(tmp_path, 'cuda')


SITECUSTOMIZE = '''
import torch
_compile = torch.compile


def compile(fn, **kwargs):  # the test's stand-in for Inductor: AOTAutograd, no code generation
    return _compile(fn, backend='aot_eager', **kwargs)


torch.compile = compile
'''


def test_two_rank_basicsr_train_of_the_compiled_step_logs_trains_saves_and_resumes(tmp_path, tiny_data):
    # ASIDModel under DDP as users launch it: torchrun, gloo, a spawned loader worker per rank,
    # EMA; no DDP wrapper (rank 0's weights broadcast, gradients all-reduced by the step), losses
    # reduced over the ranks only at print_freq (a collective every rank must reach); then resumed
    # from its last state. Every process compiles through aot_eager (a sitecustomize on PYTHONPATH).
    (tmp_path / 'site').mkdir()
    (tmp_path / 'site' / 'sitecustomize.py').write_text(SITECUSTOMIZE)
    env = cpu_ranks_env(PYTHONPATH=os.pathsep.join([str(tmp_path / 'site'), os.environ.get('PYTHONPATH', '')]))
    # one group: half the compilation of two in every process (the sharing group's graph is
    # compared with eager in-process)
    opt = tiny_options(tiny_data, name='ddpc', network={'type': 'ASID', 'upscale': 4, 'num_groups': 1, 'num_feat': 8},
                       total_iter=4, checkpoint_freq=2, val_freq=4)
    opt['model_type'] = 'ASIDModel'
    opt['train'].update(compile=True, ema_decay=0.9)
    opt['datasets']['train'].update(num_worker_per_gpu=1, dataset_enlarge_ratio=4, persistent_workers=True)

    def launch(*extra):
        opt_file = write_options(tmp_path / 'ddpc.yml', opt)
        return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                               f'--master_port={free_port()}', '-m', 'basicsr_ext', 'train', '-opt', opt_file,
                               '--launcher', 'pytorch', *extra],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    result = launch()
    assert result.returncode == 0, result.stderr[-3000:]
    [log] = [open(f).read() for f in glob.glob(str(tmp_path / 'experiments/ddpc/train_ddpc_*.log'))]
    assert 'World size (gpu number): 2' in log and 'Model [ASIDModel] is created.' in log
    assert 'Iteration 1, the first of this process, compiled and ran in' in log
    losses = [float(v) for v in re.findall(r'l_pix: (\S+)', log)]
    assert len(losses) == 4 and all(0 < v < 1 for v in losses)
    saved = torch.load(tmp_path / 'experiments/ddpc/models/net_g_4.pth', weights_only=True)
    assert {'params', 'params_ema'} <= set(saved)

    opt['train']['total_iter'] = 6
    result = launch('--auto_resume')
    assert result.returncode == 0, result.stderr[-3000:]
    logs = sorted(glob.glob(str(tmp_path / 'experiments/ddpc/train_ddpc_*.log')))
    resumed = open(logs[-1]).read()
    assert re.search(r'Resuming training from epoch: \d+, iter: 4\.', resumed)
    assert 'Iteration 5, the first of this process, compiled and ran in' in resumed
    assert len(re.findall(r'l_pix: (\S+)', resumed)) == 2
