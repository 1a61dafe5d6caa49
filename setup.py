"""asid-basicsr: the ASID super-resolution network (AAAI 2025) as a BasicSR plugin."""
import os
import zipfile

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

#: One line that site.py runs at every interpreter start-up: it installs the import hook of
#: basicsr_ext.patches.hook, which patches BasicSR when (and only when) a process imports it. This is how
#: DataLoader workers started with 'spawn' (BasicSR's choice under DDP) get the patches too.
PTH_NAME = 'asid_basicsr.pth'
PTH_LINE = ("import importlib.util as u; u.find_spec('basicsr_ext') and "
            "__import__('basicsr_ext.patches.hook').patches.hook.install()\n")


class BuildPyWithPth(build_py):
    """Puts the start-up line beside the packages (a regular install: site-packages)."""

    def run(self):
        super().run()
        with open(os.path.join(self.build_lib, PTH_NAME), 'w') as f:
            f.write(PTH_LINE)


class EditableWheelWithPth(editable_wheel):
    """The same for ``pip install -e .``, whose wheel holds no build_py output."""

    def _create_wheel_file(self, bdist_wheel):
        wheel_path = super()._create_wheel_file(bdist_wheel)
        with zipfile.ZipFile(wheel_path, 'a') as wheel:
            wheel.writestr(PTH_NAME, PTH_LINE)
        return wheel_path


setup(
    name='asid-basicsr',
    version='0.1.0',
    description='ASID (Attention-Sharing Information Distillation) super-resolution for BasicSR',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['asid_arch', 'basicsr_ext', 'basicsr_ext.*']),
    install_requires=[
        'basicsr==1.4.2',  # the compatibility patches in basicsr_ext target this release
        'torch>=2.1',
        'torchvision>=0.16',
        'einops',
        'opencv-python',
        'lmdb',
        'numpy',
        'scikit-image',  # bundles the photographs of the demo data set
        'tqdm',
    ],
    extras_require={
        # basicsr export, basicsr infer --onnx, asid_arch.spandrel_arch: not needed for training
        'export': ['onnx', 'onnxruntime', 'spandrel'],
        # the export extra is small beside torch (about 37 MB of wheels, 7 s to install): CI tests it too
        'test': ['pytest>=7', 'pytest-xdist', 'onnx', 'onnxruntime', 'spandrel'],
    },
    cmdclass={'build_py': BuildPyWithPth, 'editable_wheel': EditableWheelWithPth},
    entry_points={'console_scripts': ['basicsr = basicsr_ext.commands.cli:main']},
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
        'Topic :: Scientific/Engineering :: Image Processing',
    ],
)
