"""asid-basicsr: the ASID super-resolution network (AAAI 2025) as a BasicSR plugin."""
from setuptools import setup

setup(
    name='asid-basicsr',
    version='0.1.0',
    description='ASID (Attention-Sharing Information Distillation) super-resolution for BasicSR',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=['asid_arch', 'basicsr_ext'],
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
    extras_require={'test': ['pytest>=7']},
    entry_points={'console_scripts': ['basicsr = basicsr_ext.cli:main']},
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
        'Topic :: Scientific/Engineering :: Image Processing',
    ],
)
