#!/bin/sh
# Start a hook (its path first, then its arguments) with the first python3 on PATH
# that is not a version manager's shim: pyenv's costs ~50 ms a start, and the guard
# starts on every tool call. The hooks need only the standard library, so any Python
# 3.8+ does. -S: no site-packages (their .pth files would run first, and cost time);
# -E: no PYTHON* variables from the environment.
set -f
hook="$1"
shift
IFS=:
for dir in $PATH; do
    case "$dir" in
        */shims | */shims/) continue ;;
    esac
    if [ -x "$dir/python3" ] && [ ! -d "$dir/python3" ]; then
        exec "$dir/python3" -S -E "$hook" "$@"
    fi
done
exec python3 -S -E "$hook" "$@"
