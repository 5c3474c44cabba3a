# shellcheck shell=bash
# The local cluster's state folder: where it is by default, and the rules it must meet. Sourced by
# up.sh and down.sh (and by tests/cluster/test_cluster_dir.py); defines functions only.
#
# Why the rules: the folder holds the cluster's token, and the Unix sockets of every raylet and
# object store (under ray/), which answer without any token. Whoever can enter the folder can use
# the cluster. The default sits at a predictable path in a shared /tmp, so another user could create
# it first, or plant a symlink there that points into our home directory (down.sh --purge would
# then delete what it points at). So the folder is created with mode 0700, and a folder that already
# exists is used only if it is a real directory (no symlink), owned by us, with no access for group
# or others. Short paths matter too: an AF_UNIX socket path holds at most 107 bytes, and Ray puts
# its sockets five levels below the folder.

# The default folder, the same for up.sh and down.sh: ${TMPDIR:-/tmp}/raymlops-cluster-<uid>.
raymlops_default_cluster_dir() {
  printf '%s\n' "${TMPDIR:-/tmp}/raymlops-cluster-$(id -u)"
}

# raymlops_check_cluster_dir DIR: print why DIR may not hold a cluster, and return 1; silent and 0
# when it may. DIR must exist.
raymlops_check_cluster_dir() {
  local dir=$1 owner mode
  if [[ -L $dir ]]; then
    echo "$dir is a symbolic link; use a real directory (set RAYMLOPS_CLUSTER_DIR to choose another)"
    return 1
  fi
  if [[ ! -d $dir ]]; then
    echo "$dir exists and is not a directory"
    return 1
  fi
  if ! owner=$(stat -c %u -- "$dir") || ! mode=$(stat -c %a -- "$dir"); then
    echo "cannot read the owner and mode of $dir"
    return 1
  fi
  if [[ $owner != "$(id -u)" ]]; then
    echo "$dir belongs to uid $owner, not to you (uid $(id -u)); someone else may have created it." \
      "Set RAYMLOPS_CLUSTER_DIR to a folder of your own"
    return 1
  fi
  if (((8#$mode & 8#077) != 0)); then
    echo "$dir has mode $mode: group or others can reach the cluster's token and sockets in it." \
      "Run 'chmod 700 $dir' or set RAYMLOPS_CLUSTER_DIR to another folder"
    return 1
  fi
}

# raymlops_prepare_cluster_dir DIR MAX_SUFFIX: create DIR (mode 0700) unless it exists, then apply
# raymlops_check_cluster_dir. MAX_SUFFIX is the longest path Ray appends below DIR; the whole must
# fit in a socket address. Prints the reason and returns 1 when DIR cannot be used.
raymlops_prepare_cluster_dir() {
  local dir=$1 suffix=${2:-} parent abs
  abs=$dir
  [[ $abs == /* ]] || abs=$PWD/$dir
  if ((${#abs} + ${#suffix} > 107)); then
    echo "$abs is too long for Ray's socket paths (${#abs} + ${#suffix} > 107 characters);" \
      "set RAYMLOPS_CLUSTER_DIR to a shorter folder, e.g. under /tmp"
    return 1
  fi
  if [[ ! -e $dir && ! -L $dir ]]; then
    parent=$(dirname -- "$dir")
    mkdir -p -- "$parent" || {
      echo "cannot create $parent"
      return 1
    }
    # No -p: if another process made the folder since the test above, mkdir fails and the checks
    # below judge what is there now.
    mkdir -m 700 -- "$dir" 2>/dev/null || true
  fi
  raymlops_check_cluster_dir "$dir"
}
