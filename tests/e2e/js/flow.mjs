// E2B's JS SDK, unchanged, against `ember serve`: one sandbox's whole life, reported as JSON.
//
// The SDK reads E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY and E2B_DOMAIN from the environment,
// as a user's program would. Every step's result goes into one JSON object on stdout (the
// last line); tests/e2e/test_js_sdk.py asserts on it. A failing step still prints what was
// gathered, with `error`, and the sandbox is killed on the way out.
import { CommandExitError, Sandbox } from 'e2b'

const result = { steps: [] }
let sandbox

function step(name, value) {
  result.steps.push(name)
  result[name] = value
}

try {
  const started = Date.now()
  const tag = `e2e-js-${process.pid}-${Date.now()}`
  sandbox = await Sandbox.create('base', { timeoutMs: 120_000, metadata: { e2e: tag } })
  step('create', { sandboxId: sandbox.sandboxId, ms: Date.now() - started })

  const stdout = []
  const run = await sandbox.commands.run('echo js-out; echo js-err >&2; uname -s', {
    onStdout: (line) => stdout.push(line),
  })
  step('run', { exitCode: run.exitCode, stdout: run.stdout, stderr: run.stderr, streamed: stdout.join('') })

  try {
    await sandbox.commands.run('exit 7')
    step('failing', { raised: false })
  } catch (error) {
    step('failing', { raised: error instanceof CommandExitError, exitCode: error.exitCode })
  }

  await sandbox.files.write('/tmp/js-note.txt', 'written by the js sdk')
  step('read', await sandbox.files.read('/tmp/js-note.txt'))
  // A background process, its stream let go: only the process has to outlive the pause.
  const sleeper = await sandbox.commands.run('sleep 3600', { background: true })
  await sleeper.disconnect()
  step('background', { pid: sleeper.pid })

  step('pause', await sandbox.pause())
  const listed = []
  const paginator = Sandbox.list({ query: { metadata: { e2e: tag } } })
  while (paginator.hasNext) {
    for (const info of await paginator.nextItems()) listed.push({ sandboxId: info.sandboxId, state: info.state })
  }
  step('listedWhilePaused', listed)

  const resumed = await Sandbox.connect(sandbox.sandboxId, { timeoutMs: 120_000 })
  step('connect', {
    sandboxId: resumed.sandboxId,
    file: await resumed.files.read('/tmp/js-note.txt'),
    sleeper: (await resumed.commands.run('pgrep -x sleep >/dev/null && echo alive')).stdout.trim(),
    state: (await resumed.getInfo()).state,
  })

  step('kill', await resumed.kill())
  sandbox = undefined
  step('killAgain', await Sandbox.kill(resumed.sandboxId))
} catch (error) {
  result.error = `${error?.name}: ${error?.message}`
} finally {
  if (sandbox !== undefined) {
    await Sandbox.kill(sandbox.sandboxId).catch(() => {})
  }
}
console.log(JSON.stringify(result))
