/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Absolute path of a struct path, built in BPF: walk dentries up to the task's root, crossing mount
 * points, writing names backwards into a scratch buffer. Used by every sensor that reports paths.
 */
#pragma once

#include "common.bpf.h"

#ifndef LANNER_PATH_MAX
#define LANNER_PATH_MAX 4096
#endif
#ifndef LANNER_PATH_COMPONENTS
#define LANNER_PATH_COMPONENTS 128
#endif
#define LANNER_NAME_MAX 255

/* scratch: the path is assembled at the end of buf[0 .. LANNER_PATH_MAX) */
struct lanner_path_buf {
	char buf[LANNER_PATH_MAX + LANNER_NAME_MAX + 1];
};

#define LANNER_PATH_OK 0
#define LANNER_PATH_TRUNCATED 1   /* too deep or too long: the leading components are missing */
#define LANNER_PATH_UNREACHABLE 2 /* not below the task's root (e.g. outside a chroot) */

struct lanner_path_walk {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *root_dentry;
	struct vfsmount *root_mnt;
	struct lanner_path_buf *pb;
	__u32 pos;
	__u32 status;
};

/* one step of the walk (a bpf_loop callback): returns 1 to stop */
static long lanner_path_step(__u32 idx, void *ctx)
{
	struct lanner_path_walk *w = ctx;
	struct dentry *dentry = w->dentry, *mnt_root, *parent;
	struct vfsmount *vfsmnt = w->vfsmnt;
	struct mount *mnt = w->mnt;
	struct lanner_path_buf *pb = w->pb;
	struct qstr name;
	__u32 len, pos;

	if (dentry == w->root_dentry && vfsmnt == w->root_mnt)
		return 1;
	mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	parent = BPF_CORE_READ(dentry, d_parent);
	if (dentry == mnt_root || dentry == parent) {
		struct mount *mnt_parent = BPF_CORE_READ(mnt, mnt_parent);

		if (dentry != mnt_root || mnt == mnt_parent) {
			/* a filesystem's global root, without meeting the task's root */
			w->status = LANNER_PATH_UNREACHABLE;
			return 1;
		}
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = mnt_parent;
		w->vfsmnt = &mnt_parent->mnt;
		return 0;
	}
	name = BPF_CORE_READ(dentry, d_name);
	len = name.len & LANNER_NAME_MAX;
	pos = w->pos;
	if (pos < len + 1 || pos > LANNER_PATH_MAX) {
		w->status = LANNER_PATH_TRUNCATED;
		return 1;
	}
	pos -= len + 1;
	pos &= LANNER_PATH_MAX - 1;
	pb->buf[pos] = '/';
	bpf_probe_read_kernel(&pb->buf[(pos + 1) & (LANNER_PATH_MAX - 1)], len, name.name);
	w->pos = pos;
	w->dentry = parent;
	if (idx == LANNER_PATH_COMPONENTS - 1)
		w->status = LANNER_PATH_TRUNCATED;
	return 0;
}

/*
 * Resolve @path relative to @root into pb. Returns the start offset of the path in pb->buf (the
 * path runs to LANNER_PATH_MAX, no NUL) and sets *status. The root itself resolves to "/".
 * Needs bpf_loop (kernel 5.17+).
 */
static __always_inline __u32 lanner_resolve_path(const struct path *path, const struct path *root,
						 struct lanner_path_buf *pb, __u32 *status)
{
	struct lanner_path_walk w = {};

	w.dentry = BPF_CORE_READ(path, dentry);
	w.vfsmnt = BPF_CORE_READ(path, mnt);
	w.mnt = container_of(w.vfsmnt, struct mount, mnt);
	w.root_dentry = BPF_CORE_READ(root, dentry);
	w.root_mnt = BPF_CORE_READ(root, mnt);
	w.pb = pb;
	w.pos = LANNER_PATH_MAX;
	w.status = LANNER_PATH_OK;
	bpf_loop(LANNER_PATH_COMPONENTS, lanner_path_step, &w, 0);
	*status = w.status;
	if (w.pos >= LANNER_PATH_MAX) { /* the root itself */
		w.pos = LANNER_PATH_MAX - 1;
		pb->buf[w.pos] = '/';
	}
	return w.pos;
}
