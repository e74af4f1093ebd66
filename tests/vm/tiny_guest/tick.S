/*
 * tick.S: the smallest guest Firecracker can run on a PVM host, where guest kernel mode is
 * emulated one instruction at a time (so: only plain integer instructions, port I/O, rdtsc).
 *
 * Firecracker loads this ELF (no PVH note) at its link address and enters _start in 64-bit
 * mode with the low 1 GiB identity-mapped. The guest then
 *   - prints "TINY-GUEST-READY" on COM1 (port 0x3f8),
 *   - forever: adds one to `ticks` (a quadword in guest RAM, inside this image's .data),
 *     stores the new value into page (ticks mod 1024) of the scratch area [4 MiB, 8 MiB),
 *     prints "TICK <ticks>", and spins on the TSC for TICK_TSC_CYCLES (~0.4 s at 2.6 GHz).
 * So a restored snapshot proves itself by continuing the count, and every tick dirties
 * exactly one 4 KiB page besides .data and the stack (what Diff snapshots record).
 * It never halts: with interrupts off a hlt would stop the vCPU for good.
 */
        .set    COM1_DATA, 0x3f8
        .set    COM1_LSR, 0x3fd         /* line status; bit 5 = transmit holding register empty */
        .set    LSR_THRE, 0x20
        .set    STACK_TOP, 0xf00000     /* 15 MiB: free RAM below the image at 16 MiB */
        .set    SCRATCH_BASE, 0x400000
        .set    SCRATCH_PAGES, 1024
        .set    PAGE_SHIFT, 12
        .set    TICK_TSC_CYCLES, 1000000000

        .code64
        .text
        .globl  _start
_start:
        cli
        mov     $STACK_TOP, %esp
        lea     ready_text(%rip), %rsi
        call    write_text

next_tick:
        incq    ticks(%rip)
        mov     ticks(%rip), %rax
        mov     %rax, %rbx
        and     $(SCRATCH_PAGES - 1), %rbx
        shl     $PAGE_SHIFT, %rbx
        mov     %rax, SCRATCH_BASE(%rbx)        /* dirty one scratch page */
        lea     tick_text(%rip), %rsi
        call    write_text
        mov     ticks(%rip), %rax
        call    write_decimal
        mov     $'\n', %al
        call    write_byte
        call    wait_one_tick
        jmp     next_tick

/* write_byte: send %al to COM1 once the transmitter is ready. Keeps every register but %al's copy. */
write_byte:
        push    %rdx
        push    %rcx
        mov     %al, %cl
        mov     $COM1_LSR, %dx
1:      in      %dx, %al
        test    $LSR_THRE, %al
        jz      1b
        mov     $COM1_DATA, %dx
        mov     %cl, %al
        out     %al, %dx
        pop     %rcx
        pop     %rdx
        ret

/* write_text: send the NUL-terminated string at %rsi. Clobbers %rsi, %al. */
write_text:
        movb    (%rsi), %al
        test    %al, %al
        jz      2f
        call    write_byte
        inc     %rsi
        jmp     write_text
2:      ret

/* write_decimal: send %rax in decimal. Digits are pushed least significant first, then popped. */
write_decimal:
        mov     $10, %r8
        xor     %ecx, %ecx
3:      xor     %edx, %edx
        div     %r8
        push    %rdx
        inc     %ecx
        test    %rax, %rax
        jnz     3b
4:      pop     %rax
        add     $'0', %al
        call    write_byte
        dec     %ecx
        jnz     4b
        ret

/* wait_one_tick: spin until the TSC has advanced TICK_TSC_CYCLES. */
wait_one_tick:
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        mov     $TICK_TSC_CYCLES, %r9
        add     %rax, %r9
5:      pause
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        cmp     %r9, %rax
        jb      5b
        ret

        .data
        .balign 8
ticks:  .quad   0
ready_text:
        .asciz  "TINY-GUEST-READY\n"
tick_text:
        .asciz  "TICK "
