"""``basicsr benchmark --profile``: where ASID's inference time goes, block by block.

Each block of the network (the distillation block's local blocks, SLA/SGA layers, 1x1 fusions
and BlockC; a group's ``res_end`` and ESA; the input conv, output conv and upsampler) is run
alone on the input it receives inside the network (recorded with forward hooks at ``--size``),
the way the fast path runs the whole network: on a GPU compiled by Inductor and replayed as
one CUDA graph; on a CPU eagerly. For each block the table gives

- ``calls``: how often the block runs per frame (blocks of the sharing groups are alike, so one
  of them is measured and counted for all);
- ``kernels``: GPU kernels one call launches (CPU: operators);
- ``us``: microseconds a call (median of replays, CUDA events);
- ``MB``: the least memory traffic a call needs: its inputs, its output and its weights read or
  written once, and ``floor us``: that traffic at the bandwidth measured in the same run (a copy
  of 1 GiB on a GPU), the time of a perfectly fused kernel bound by memory;
- ``us/kernel``: the time per kernel, which says whether a block is bound by its kernels'
  count (a few microseconds each, whatever they compute) or by its bytes.

The whole network, compiled and replayed the same way, closes the table with the sum of the
blocks beside it.
"""
import torch

from asid_arch import ASID
from basicsr_ext.commands.benchmark_runs import time_forward


def _nbytes(value):
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def record_block_inputs(net, x):
    """Run ``net(x)`` once; return ``[(name, kind, module, args)]`` for every profiled block, with
    the positional arguments the block received (the first sharing group stands for all of them)."""
    blocks = [('input', 'input conv', net.input)]
    for g in range(min(2, net.num_groups)):  # groups 2.. are alike group 1: the same modules on the same shapes
        group = getattr(net, f'block{g}')
        idb = group.residual_layer[0] if g == 0 else group.residual_layer
        kind = 'computing' if g == 0 else 'sharing'
        for name in ('LB1', 'SLA1', 'SGA1', 'pw1', 'LB2', 'SLA2', 'SGA2', 'pw2', 'LB3', 'SLA3', 'SGA3', 'pw3',
                     'BlockC'):
            blocks.append((f'block{g}.{name}', f'{kind} {name.rstrip("123")}', getattr(idb, name)))
        blocks.append((f'block{g}.res_end', 'res_end', group.res_end))
        blocks.append((f'block{g}.esa', 'ESA', group.esa))
    blocks += [('output', 'output conv', net.output), ('up', 'upsampler', net.up)]
    recorded, hooks = {}, []

    def record(name):
        def hook(module, args, output):  # returns None: the output stays the block's
            recorded.setdefault(name, tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args))
        return hook

    for name, _, module in blocks:
        hooks.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return [(name, kind, module, recorded[name]) for name, kind, module in blocks]


def calls_per_frame(name, num_groups):
    """Times the block named ``name`` (as :func:`record_block_inputs` names it) runs in a frame."""
    return num_groups - 1 if name.startswith('block1.') else 1


class Runner:
    """``module(*args)`` as the fast path runs it: on a GPU compiled (Inductor, static shapes) and
    captured into one CUDA graph, replayed by :meth:`__call__`; on a CPU the eager module."""

    def __init__(self, module, args, compile=True):
        self.module, self.args = module, args
        self.cuda = args[0].is_cuda
        self.fn = torch.compile(module, dynamic=False) if compile and self.cuda else module
        if not self.cuda:
            return
        with torch.no_grad():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # compile, then warm (cuBLAS workspaces, autotuning)
                    self.fn(*args)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.fn(*args)

    def __call__(self):
        if self.cuda:
            self.graph.replay()
            return self.out
        with torch.no_grad():
            return self.fn(*self.args)

    def seconds(self, repeat):
        """Median seconds of a call over ``repeat`` timed calls (after one untimed)."""
        return time_forward(lambda _: self(), None, self.args[0].device, repeat, warmup=1)[0]

    def kernels(self):
        """GPU kernels (CPU: top-level operators) of one call, counted by the torch profiler on the
        compiled function run outside the graph (a graph's replay hides its kernels from some
        profiler versions)."""
        from torch.profiler import DeviceType, ProfilerActivity, profile
        activity = ProfilerActivity.CUDA if self.cuda else ProfilerActivity.CPU
        with torch.no_grad(), profile(activities=[activity]) as prof:
            self.fn(*self.args)
            if self.cuda:
                torch.cuda.synchronize()
        events = prof.events()
        if self.cuda:
            return sum(1 for e in events if e.device_type == DeviceType.CUDA)
        return sum(1 for e in events if e.cpu_parent is None and e.name.startswith('aten::'))


def memory_bandwidth(device, nbytes=None, repeat=10):
    """Bytes/s of a device-to-device copy of ``nbytes`` (read + write counted; default 1 GiB on a GPU,
    256 MiB on a CPU), median of ``repeat``."""
    nbytes = nbytes or (1 << 30 if device.type == 'cuda' else 1 << 28)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2 * nbytes / time_forward(lambda _: dst.copy_(src), None, device, repeat, warmup=1)[0]


def profile_blocks(net, size, device, dtype, repeat, log):
    """The table's rows for ``net`` (an :class:`ASID`) on one ``size`` (W, H) frame; see the module doc."""
    if not isinstance(net, ASID):
        raise TypeError(f'--profile measures ASID networks, not {type(net).__name__}')
    w, h = size
    net = net.eval().to(device=device, dtype=dtype)
    x = torch.rand(1, 3, h, w, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(0))
    ph, pw = net.padded_size(h, w)
    padded = torch.nn.functional.pad(x, (0, pw - w, 0, ph - h))
    bandwidth = memory_bandwidth(device)
    log(f'profile: memory bandwidth {bandwidth / 1e9:.0f} GB/s (a copy)')
    rows = []
    for name, kind, module, args in record_block_inputs(net, x):
        runner = Runner(module, args)
        seconds, kernels = runner.seconds(repeat), runner.kernels()
        params = sum(p.numel() * p.element_size() for p in module.parameters())
        traffic = _nbytes(args) + _nbytes(runner()) + params
        rows.append({'block': name, 'kind': kind, 'calls': calls_per_frame(name, net.num_groups), 'kernels': kernels,
                     'us': seconds * 1e6, 'mb': traffic / 1e6, 'floor_us': traffic / bandwidth * 1e6})
        log(f'profile: {name}: {kernels} kernels, {seconds * 1e6:.1f} us')
    whole = Runner(net.body, (padded, ))
    seconds, kernels = whole.seconds(repeat), whole.kernels()
    traffic = _nbytes(padded) + _nbytes(whole()) + sum(p.numel() * p.element_size() for p in net.parameters())
    return {'network': f'ASID num_groups={net.num_groups}', 'device': device.type, 'input': f'{w}x{h}', 'dtype': str(dtype).split('.')[-1],
            'bandwidth_gb_s': bandwidth / 1e9, 'blocks': rows,
            'whole': {'kernels': kernels, 'us': seconds * 1e6, 'mb': traffic / 1e6,
                      'floor_us': traffic / bandwidth * 1e6}}


def print_profile(profile, out):
    """The per-block table of :func:`profile_blocks`'s result, with totals per frame."""
    mode = 'compiled, one CUDA graph each' if profile['device'] == 'cuda' else 'eager'
    print(f'\nprofile of {profile["network"]}, one {profile["input"]} frame, {profile["dtype"]}, every block alone '
          f'({mode}); memory bandwidth {profile["bandwidth_gb_s"]:.0f} GB/s', file=out)
    print(f'{"block":<16} {"kind":<18} {"calls":>5} {"kernels":>7} {"us":>8} {"us/kernel":>9} {"MB":>7} '
          f'{"floor us":>8}', file=out)
    total = {'kernels': 0, 'us': 0., 'mb': 0., 'floor_us': 0.}
    for r in profile['blocks']:
        print(f'{r["block"]:<16} {r["kind"]:<18} {r["calls"]:>5} {r["kernels"]:>7} {r["us"]:>8.1f} '
              f'{r["us"] / max(1, r["kernels"]):>9.2f} {r["mb"]:>7.2f} {r["floor_us"]:>8.2f}', file=out)
        for key in total:
            total[key] += r[key] * r['calls']
    by_kind = {}
    for r in profile['blocks']:
        kind = by_kind.setdefault(r['kind'], {'kernels': 0, 'us': 0.})
        kind['kernels'] += r['kernels'] * r['calls']
        kind['us'] += r['us'] * r['calls']
    print(f'{"sum of blocks":<35} {total["kernels"]:>7} {total["us"]:>8.1f} '
          f'{total["us"] / max(1, total["kernels"]):>9.2f} {total["mb"]:>7.2f} {total["floor_us"]:>8.2f}', file=out)
    w = profile['whole']
    print(f'{"whole network":<35} {w["kernels"]:>7} {w["us"]:>8.1f} {w["us"] / max(1, w["kernels"]):>9.2f} '
          f'{w["mb"]:>7.2f} {w["floor_us"]:>8.2f}', file=out)
    print('per frame, by kind: ' + ', '.join(
        f'{kind} {v["us"]:.0f} us ({v["us"] / max(1e-9, total["us"]):.0%}, {v["kernels"]} kernels)'
        for kind, v in sorted(by_kind.items(), key=lambda kv: -kv[1]['us'])), file=out)
