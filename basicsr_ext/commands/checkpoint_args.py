"""The arguments that check or override what a checkpoint holds, shared by ``infer`` and ``export``."""

VALUE_RANGES = {'0,1': (0, 1), '-1,1': (-1, 1)}


def add_weight_overrides(parser):
    """``--scale``, ``--num-groups`` (checked against the weights) and ``--value-range`` (a tuple or None)."""
    parser.add_argument('--scale', type=int, default=None, help='scale; must match the weights (default: from them)')
    parser.add_argument('--num-groups', type=int, default=None,
                        help='groups: 3 ASID, 8 ASID-D8; must match the weights (default: from them)')
    parser.add_argument('--value-range', choices=list(VALUE_RANGES), default=None, metavar='LO,HI',
                        help="the range the network computes in, 0,1 or -1,1 (default: as the checkpoint records "
                        "it; -1,1 for the authors' raw release; else from the option file of its run, else 0,1)")


def attach_value_ranges(argv):
    """``--value-range -1,1`` as ``--value-range=-1,1``: argparse takes a separate value that starts
    with '-' (and is not a plain number) for an option, and would refuse it."""
    out = list(argv)
    for i in range(len(out) - 1, 0, -1):
        if out[i - 1] == '--value-range' and out[i] in VALUE_RANGES:
            out[i - 1:i + 1] = [f'--value-range={out[i]}']
    return out


def value_range_of(args):
    """``--value-range`` as the tuple the network takes, or None."""
    return None if args.value_range is None else VALUE_RANGES[args.value_range]
