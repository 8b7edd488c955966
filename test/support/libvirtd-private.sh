#!/bin/sh
# Runs libvirtd with its directories private to one test (see libvirt.ts): started as
#   ip netns exec <hv> unshare --mount --propagation private /bin/sh libvirtd-private.sh <dir>
# it bind-mounts <dir>/{etc,run,lib,log,cache} over libvirt's own directories in this mount
# namespace only, then becomes libvirtd. The host's libvirt directories are never used; a mount
# point the host lacks is made as an empty directory (the mount lands on it only in here).
set -eu
dir=$1
[ -d "$dir/etc" ] || { echo "libvirtd-private.sh: $dir/etc is not a directory" >&2; exit 2; }
for pair in etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt log:/var/log/libvirt cache:/var/cache/libvirt; do
  src=$dir/${pair%%:*}
  dst=${pair#*:}
  mkdir -p "$dst"
  mount --bind "$src" "$dst"
done
# libvirtd looks up QEMU's user (Debian builds it as libvirt-qemu) before it reads qemu.conf; that
# user comes with libvirt-daemon-system, which the lab does without: it is added to private copies
for file in passwd group; do
  grep -q '^libvirt-qemu:' "/etc/$file" && continue
  cp "/etc/$file" "$dir/$file"
  if [ $file = passwd ]; then
    echo 'libvirt-qemu:x:64055:64055:Libvirt Qemu (sg6 test):/var/lib/libvirt:/usr/sbin/nologin' >>"$dir/$file"
  else
    echo 'libvirt-qemu:x:64055:' >>"$dir/$file"
  fi
  mount --bind "$dir/$file" "/etc/$file"
done
exec /usr/sbin/libvirtd --pid-file "$dir/run/libvirtd.pid"
