/*
 * LD_PRELOAD probe for docs/benchmarks.md: records CLOCK_MONOTONIC at the
 * first KVM_RUN ioctl of a process (any VMM: ours or QEMU), so "process
 * start -> first guest instruction" is measured the same way for both.
 * The harness reads "first_kvm_run_ns <N>" from $KVM_RUN_PROBE_OUT.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define KVM_RUN 0xAE80UL

static int fired;

int ioctl(int fd, unsigned long request, ...)
{
	static int (*real_ioctl)(int, unsigned long, void *);
	va_list ap;
	void *arg;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (!real_ioctl)
		real_ioctl = (int (*)(int, unsigned long, void *))dlsym(RTLD_NEXT, "ioctl");
	if (request == KVM_RUN && !__atomic_exchange_n(&fired, 1, __ATOMIC_SEQ_CST)) {
		struct timespec ts;
		const char *out = getenv("KVM_RUN_PROBE_OUT");
		FILE *f;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		if (out && (f = fopen(out, "w"))) {
			fprintf(f, "first_kvm_run_ns %llu\n",
				(unsigned long long)ts.tv_sec * 1000000000ULL + ts.tv_nsec);
			fclose(f);
		}
	}
	return real_ioctl(fd, request, arg);
}
