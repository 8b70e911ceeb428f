# shellcheck shell=bash
# Builds and caches the busybox initramfs that scripts/vm-run boots. Source it after
# common.sh. The image is keyed by a hash of everything that goes into it, so it is
# rebuilt when the kernel, the module list, busybox or scripts/lib/guest-init.sh change.

# Bump when the layout produced by build_initramfs changes.
INITRAMFS_LAYOUT=1
# Modules the guest loads, in this order; their dependencies are added before them.
# 9p (netfs, 9pnet, 9pnet_virtio, 9p) shares the host root; virtio_blk backs --disk;
# ext4 is a module in Debian's kernel (to mount ext4 on ublk or loop devices) and needs a
# crc32c driver, which nothing would load on demand (the guest has no modprobe).
GUEST_MODULES=(netfs 9pnet 9pnet_virtio 9p virtio_blk loop ublk_drv overlay crc32c_generic ext4)

# Prints the dependencies of a module file (.ko.xz), one name a line, from its modinfo.
module_depends() {
    local deps
    deps=$(xz -dc "$1" | tr '\0' '\n' | grep -a '^depends=' | head -n 1 || true)
    deps=${deps#depends=}
    [[ -n $deps ]] && tr ',' '\n' <<<"$deps"
    return 0
}

# initramfs_image CACHE MODDIR RELEASE: prints the path of the initramfs, building it if needed.
initramfs_image() {
    local cache=$1 moddir=$2 release=$3
    local init=$MESOBLK_REPO/scripts/lib/guest-init.sh busybox=/bin/busybox
    local -a modules=("${GUEST_MODULES[@]}")
    # Extra modules for experiments, e.g. MESOBLK_VM_MODULES="null_blk nbd".
    if [[ -n ${MESOBLK_VM_MODULES:-} ]]; then
        # shellcheck disable=SC2206 # word splitting wanted
        modules+=(${MESOBLK_VM_MODULES})
    fi
    [[ -x $busybox ]] || die "$busybox missing (Debian package busybox-static; run scripts/setup)"
    [[ -f $init ]] || die "$init missing"

    local key dir out
    key=$({
        printf 'layout=%s\nrelease=%s\nmodules=%s\n' "$INITRAMFS_LAYOUT" "$release" "${modules[*]}"
        sha256sum "$init" "$busybox" | cut -d' ' -f1
    } | sha256sum | cut -c1-16)
    dir=$cache/initramfs
    out=$dir/initramfs-$key.cpio.gz
    if [[ -f $out ]]; then
        printf '%s\n' "$out"
        return 0
    fi
    mkdir -p "$dir"
    build_initramfs "$dir" "$out" "$moddir" "$init" "$busybox" "${modules[@]}"
    # Drop other images once they are an hour old (a concurrent vm-run may be using one).
    find "$dir" -maxdepth 1 -name 'initramfs-*.cpio.gz' ! -path "$out" -mmin +60 -delete 2>/dev/null || true
    printf '%s\n' "$out"
}

build_initramfs() {
    local dir=$1 out=$2 moddir=$3 init=$4 busybox=$5
    shift 5
    local stage f name applet
    stage=$(mktemp -d "$dir/build.XXXXXX")
    # Index the kernel's modules by name ('-' and '_' are the same in module names).
    local -A path_of=()
    while IFS= read -r f; do
        name=${f##*/}
        name=${name%.ko.xz}
        path_of[${name//-/_}]=$f
    done < <(find "$moddir/kernel" -name '*.ko.xz')

    # Depth-first: dependencies first, each module once.
    local -a order=()
    local -A seen=()
    add_module() {
        local m=${1//-/_} dep
        [[ -n ${seen[$m]:-} ]] && return 0
        seen[$m]=1
        [[ -n ${path_of[$m]:-} ]] ||
            die "module $m not found under $moddir (built in, or misspelled in MESOBLK_VM_MODULES?)"
        while IFS= read -r dep; do
            [[ -n $dep ]] && add_module "$dep"
        done < <(module_depends "${path_of[$m]}")
        order+=("$m")
    }
    for name in "$@"; do
        add_module "$name"
    done

    mkdir -p "$stage"/{bin,dev,proc,sys,host,mnt/results,etc/mesoblk,lib/modules,tmp}
    cp "$busybox" "$stage/bin/busybox"
    for applet in $("$busybox" --list); do
        [[ $applet == busybox ]] || ln -s busybox "$stage/bin/$applet"
    done
    ln -s bin "$stage/sbin"
    install -m 0755 "$init" "$stage/init"
    # The kernel opens /dev/console for init before devtmpfs is mounted (needs root to create;
    # without it init reopens the console itself once devtmpfs is up).
    mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
    for name in "${order[@]}"; do
        xz -dc "${path_of[$name]}" >"$stage/lib/modules/$name.ko"
        printf '%s\n' "$name" >>"$stage/etc/mesoblk/modules"
    done
    (cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) |
        gzip -1 >"$out.tmp.$$"
    mv "$out.tmp.$$" "$out"
    rm -rf "$stage"
}
