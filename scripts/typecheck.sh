#!/usr/bin/env bash
# mypy, strict on the scope that pyproject.toml's [tool.mypy] lists. setuptools maps folders to import names
# (runtime/ is sg2v.runtime, export/ sg2v.export, cuda/ sg2v.kernels) through an editable-install finder that
# mypy cannot follow, so this mirrors the import tree with symlinks under build/mypy-tree, runs mypy there and
# names each reported file by its path in the repository. Extra arguments go to mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/mypy-tree
rm -rf "$tree"
mkdir -p "$tree/sg2v"
for path in sg2v/*; do
    ln -s "../../../$path" "$tree/sg2v/$(basename "$path")"
done
ln -s ../../../runtime "$tree/sg2v/runtime"
ln -s ../../../export "$tree/sg2v/export"
ln -s ../../../cuda "$tree/sg2v/kernels"
set +e
"${MYPY:-mypy}" --config-file pyproject.toml "$@" 2>&1 |
    sed -e "s#^$tree/sg2v/runtime/#runtime/#" -e "s#^$tree/sg2v/export/#export/#" \
        -e "s#^$tree/sg2v/kernels/#cuda/#" -e "s#^$tree/sg2v/#sg2v/#"
status=${PIPESTATUS[0]}
exit "$status"
