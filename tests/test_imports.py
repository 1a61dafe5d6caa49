"""The imports between our modules point one way: no circle, the network does not import the glue.

Read from the source (the ``import`` statements, by ``ast``), so that a circle shows here even
where today's import order happens to work. Module level: the statements that run when a module
is imported (also inside ``if``/``try`` at the top). Importing ``a.b`` also runs ``a/__init__``.
"""
import ast
import os

import pytest

from conftest import REPO

PACKAGES = ('asid_arch', 'basicsr_ext')


def our_modules():
    """{'asid_arch.checkpoint': path, 'asid_arch': path of its __init__, 'basicsr_ext.commands.cli': ...}"""
    modules = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            dotted = os.path.relpath(folder, REPO).replace(os.sep, '.')
            for name in sorted(f for f in files if f.endswith('.py')):
                stem = name[:-3]
                modules[dotted if stem == '__init__' else f'{dotted}.{stem}'] = os.path.join(folder, name)
    return modules


MODULES = our_modules()


def _imported_names(node, module):
    """Dotted names a statement imports (relative imports resolved against ``module``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
            package = module if MODULES[module].endswith('__init__.py') else module.rpartition('.')[0]
            for _ in range(node.level - 1):
                package = package.rpartition('.')[0]
            base = f'{package}.{base}' if base else package
        return [base] + [f'{base}.{alias.name}' for alias in node.names]
    return []


def imports_of(module, module_level_only):
    """Our modules that ``module`` imports (with the packages whose __init__ that runs first)."""
    tree = ast.parse(open(MODULES[module], encoding='utf-8').read())
    if module_level_only:
        nodes, stack = [], list(tree.body)
        while stack:  # top-level statements, also inside if/try/with blocks; not in functions or classes
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            nodes.append(node)
            for field in ('body', 'orelse', 'finalbody', 'handlers'):
                stack.extend(getattr(node, field, []))
    else:
        nodes = list(ast.walk(tree))
    found = set()
    own_packages = {module.rsplit('.', i)[0] for i in range(module.count('.') + 1)}
    for node in nodes:
        for name in _imported_names(node, module):
            parts = name.split('.')
            for i in range(1, len(parts) + 1):
                target = '.'.join(parts[:i])
                if target in MODULES and target not in own_packages:
                    found.add(target)
    return found


#: The floors of the house, lowest first: a module may import from its own floor and the floors below.
FLOORS = ('asid_arch', 'basicsr_ext.common', 'basicsr_ext.patches', 'basicsr_ext.training', 'basicsr_ext.commands')


def floor(module):
    """The index in FLOORS of the floor ``module`` stands on (the bare ``basicsr_ext``: with the patches,
    since all its __init__ does is install their hook)."""
    if module in ('basicsr_ext', 'basicsr_ext.__main__'):
        return FLOORS.index('basicsr_ext.patches' if module == 'basicsr_ext' else 'basicsr_ext.commands')
    return next(i for i, name in enumerate(FLOORS) if module == name or module.startswith(name + '.'))


def test_the_module_list_is_read():
    assert {'asid_arch', 'asid_arch.asid_arch', 'basicsr_ext', 'basicsr_ext.commands.cli',
            'basicsr_ext.patches.hook', 'basicsr_ext.training.models', 'basicsr_ext.common.options'} <= set(MODULES)
    assert imports_of('basicsr_ext.commands.cli', True) >= {'basicsr_ext.commands.prepare',
                                                            'basicsr_ext.common.errors'}
    assert imports_of('asid_arch.inference', True) == {'asid_arch.checkpoint', 'asid_arch.graphs', 'asid_arch.kernels',
                                                       'asid_arch.runtime', 'asid_arch.tiling'}
    assert all(floor(m) is not None for m in MODULES)


def _circle(graph):
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph[module]):
            found = visit(target)
            if found:
                return found
        path.pop()
        done.add(module)
        return None

    return next((c for c in map(visit, MODULES) if c), None)


@pytest.mark.parametrize('module_level_only', [True, False], ids=['at module level', 'counting imports in functions'])
def test_no_import_circle_among_our_modules(module_level_only):
    circle = _circle({m: imports_of(m, module_level_only) for m in MODULES})
    assert circle is None, 'import circle: ' + ' -> '.join(circle)


def test_every_import_points_down_the_floors_network_shared_pieces_patches_training_commands():
    # anywhere in the files, inside functions too
    upward = [f'{m} -> {target}' for m in MODULES for target in imports_of(m, module_level_only=False)
              if floor(target) > floor(m)]
    assert not upward, upward


def test_the_network_package_imports_nothing_of_basicsr_ext():
    for module in (m for m in MODULES if m.split('.')[0] == 'asid_arch'):
        glue = {m for m in imports_of(module, module_level_only=False) if m.split('.')[0] == 'basicsr_ext'}
        assert not glue, (module, glue)


def test_the_hook_imports_no_module_of_ours_when_imported():
    # it is imported at every interpreter start (the .pth line): no torch, no BasicSR until basicsr is imported
    assert imports_of('basicsr_ext.patches.hook', module_level_only=True) == set()
    assert imports_of('basicsr_ext', module_level_only=True) == {'basicsr_ext.patches.hook', 'basicsr_ext.patches'}


def test_applying_the_patches_imports_neither_the_network_nor_anything_that_imports_basicsr():
    # the hook applies them while `import basicsr` is under way (asid_arch imports BasicSR):
    # module level only, followed through our modules
    seen, todo = set(), ['basicsr_ext.patches.compat']
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imports_of(module, module_level_only=True))
    assert not {m for m in seen if m.split('.')[0] == 'asid_arch'}, sorted(seen)


def test_only_the_entry_point_imports_the_command_line_module():
    # the commands share errors and image reading through basicsr_ext.common, never through cli
    # (not even inside a function: cli hands benchmark its train command instead)
    for module in MODULES:
        if module not in ('basicsr_ext.commands.cli', 'basicsr_ext.__main__'):
            assert 'basicsr_ext.commands.cli' not in imports_of(module, module_level_only=False), module
