"""The arguments that check or override what a checkpoint holds, shared by ``infer`` and ``export``."""

VALUE_RANGES = {'0,1': (0, 1), '-1,1': (-1, 1)}


def add_weight_overrides(parser):
    """``--scale``, ``--num-groups`` (checked against the weights) and ``--value-range`` (a tuple or None)."""
    parser.add_argument('--scale', type=int, default=None, help='scale; must match the weights (default: from them)')
    parser.add_argument('--num-groups', type=int, default=None,
                        help='groups: 3 ASID, 8 ASID-D8; must match the weights (default: from them)')
    parser.add_argument('--value-range', choices=list(VALUE_RANGES), default=None,
                        help="the range the network computes in (default: as the checkpoint records it; -1,1 for "
                        "the authors' raw release; else from the option file of its run, else 0,1)")


def value_range_of(args):
    """``--value-range`` as the tuple the network takes, or None."""
    return None if args.value_range is None else VALUE_RANGES[args.value_range]
