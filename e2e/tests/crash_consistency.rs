//! Crash consistency of the bridge's ZooKeeper mirror (docs/architecture.md, "Crash
//! consistency"): whatever write a crash follows, a restart leaves exactly one znode per
//! registered PoolNode and nothing else of ours, loses no request and puts no slot in two builds.
//!
//! - One test per failpoint (`nodepool_service::failpoint`): the bridge or the operator aborts
//!   right after that write while Zuul's client works, is started again, and the invariant must
//!   hold within a bounded time.
//! - A randomised kill loop under load: Zuul's client with 4 workers while the bridge and the
//!   operator are killed (SIGKILL) 20 times each, alternately.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nodepool_e2e::{invariant, stack::Stack, zuul::Zuul};
use nodepool_service::failpoint::{self, Failpoint};

/// How long the invariant may take to hold again after a restart: the bridge's resync, then a
/// cleanup pass (every second in tests) once an orphan's grace (2 s in tests) is over.
const SETTLE: Duration = Duration::from_secs(30);
const WAIT: u64 = 60;

/// The stack's slots: `static-label` × `SLOTS` and `static-single`.
const SLOTS: u32 = 2;

#[derive(Clone, Copy, Debug)]
enum Component {
    Bridge,
    Operator,
}

impl Component {
    fn of(point: Failpoint) -> Self {
        if point.in_bridge() { Component::Bridge } else { Component::Operator }
    }

    fn running(self, stack: &Stack) -> bool {
        let server = match self {
            Component::Bridge => &stack.bridge,
            Component::Operator => &stack.operator,
        };
        server.as_ref().is_some_and(|s| s.is_running())
    }

    fn kill(self, stack: &mut Stack) {
        match self {
            Component::Bridge => stack.kill_bridge(),
            Component::Operator => stack.kill_operator(),
        }
    }

    fn start(self, stack: &mut Stack, env: &[(&str, &str)]) -> Result<()> {
        match self {
            Component::Bridge => stack.start_bridge_with(env),
            Component::Operator => stack.start_operator_with(env),
        }
    }
}

/// Runs builds until `component` aborts at `point`; returns the requests not served yet.
async fn work_until_it_aborts(
    stack: &Stack,
    zuul: &mut Zuul,
    component: Component,
    point: Failpoint,
) -> Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut unserved = Vec::new();
    while component.running(stack) {
        if Instant::now() > deadline {
            bail!("failpoint {} was never reached; see {}", point.name(), stack.dir.display());
        }
        let request = zuul.request(&["static-label"]).await?;
        match zuul.wait(&request, 5).await {
            Ok(outcome) if outcome["state"] == "fulfilled" => {
                // The build may meet the crash half-way; Zuul then asks again, as here.
                if let Err(error) = zuul.run_build(&request).await {
                    eprintln!("build on {request} failed during the crash: {error:#}");
                }
            }
            Ok(outcome) => bail!("request {request} was not fulfilled: {outcome}"),
            Err(_) => unserved.push(request),
        }
    }
    Ok(unserved)
}

async fn crash_at(point: Failpoint) -> Result<()> {
    let mut stack = Stack::start(&format!("crash-{}", point.name())).await?;
    stack.apply_provider(stack.static_provider("lab", SLOTS)).await?;
    stack.wait_for_ready_nodes(SLOTS as usize + 1, Duration::from_secs(60)).await?;
    let mut zuul = Zuul::connect(&stack).await?;

    let component = Component::of(point);
    component.kill(&mut stack);
    component.start(&mut stack, &[(failpoint::VARIABLE, point.name())])?;
    let unserved = work_until_it_aborts(&stack, &mut zuul, component, point).await?;
    let log = std::fs::read_to_string(stack.logs().join(format!(
        "{}.log",
        match component {
            Component::Bridge => "bridge",
            Component::Operator => "operator",
        }
    )))?;
    assert!(
        log.contains(&format!("failpoint {} reached", point.name())),
        "aborted elsewhere: see {}",
        stack.dir.display()
    );

    component.kill(&mut stack); // reaps it and waits for its port
    component.start(&mut stack, &[])?;
    for request in unserved {
        let outcome = zuul.wait(&request, WAIT).await?;
        assert_eq!(outcome["state"], "fulfilled", "{request} after the restart: {outcome}");
        zuul.run_build(&request).await.with_context(|| format!("build on {request}"))?;
    }
    let request = zuul.request(&["static-label", "static-label"]).await?;
    assert_eq!(zuul.wait(&request, WAIT).await?["state"], "fulfilled");
    zuul.run_build(&request).await?;

    invariant::wait_until_it_holds(&stack, SETTLE).await?;
    let ours = invariant::our_znodes(&stack).await?;
    assert_eq!(ours.len(), SLOTS as usize + 1, "one znode per slot: {ours:?}");
    Ok(())
}

macro_rules! crash_tests {
    ($($name:ident => $point:expr),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() -> Result<()> {
                crash_at($point).await
            }
        )*

        /// Every failpoint has a test above.
        #[test]
        fn every_failpoint_is_tested() {
            let tested = [$($point),*];
            for point in Failpoint::ALL {
                assert!(tested.contains(&point), "no crash test for {}", point.name());
            }
        }
    };
}

crash_tests! {
    bridge_crash_after_creating_a_znode => Failpoint::BridgeNodeCreated,
    bridge_crash_after_writing_a_znode => Failpoint::BridgeNodeWritten,
    bridge_crash_after_retiring_a_znode => Failpoint::BridgeNodeRetired,
    bridge_crash_after_recording_a_view => Failpoint::BridgeViewRecorded,
    bridge_crash_after_writing_fulfilled => Failpoint::BridgeRequestFulfilled,
    operator_crash_after_a_hand_out => Failpoint::OperatorHandOutWritten,
    operator_crash_after_recycling_a_slot => Failpoint::OperatorSlotRecycled,
}

/// A small xorshift generator: the kill intervals vary from run to run, and the seed is printed
/// so a failing run can be repeated (`NODEPOOL_KILL_SEED`).
struct Intervals(u64);

impl Intervals {
    fn next_millis(&mut self, from: u64, to: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        from + self.0 % (to - from)
    }
}

/// Kills per component in the loop below.
const KILLS: usize = 20;

#[tokio::test]
async fn killed_twenty_times_each_under_load_nothing_is_lost_or_left_behind() -> Result<()> {
    let slots = 8;
    let mut stack = Stack::start("kill-loop").await?;
    stack.apply_provider(stack.static_provider("lab", slots)).await?;
    stack.wait_for_ready_nodes(slots as usize + 1, Duration::from_secs(60)).await?;

    let seed = std::env::var("NODEPOOL_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    }) | 1;
    eprintln!("kill loop seed {seed} (NODEPOOL_KILL_SEED repeats it)");
    let mut intervals = Intervals(seed);

    // Zuul's client: 4 workers, each request → fulfilled → accept → in-use → used, checking that
    // no slot is in two builds at once. It runs past the last kill so every request completes.
    let args = ["bench", "--workers", "4", "--duration", "95", "--timeout", "90"];
    let bench = stack
        .zuul_command(&stack.chroot, &args)?
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting Zuul's client")?
        .wait_with_output();
    let kills = async {
        let mut done = (0, 0);
        let mut next = Component::Bridge;
        tokio::time::sleep(Duration::from_secs(3)).await;
        while done.0 < KILLS || done.1 < KILLS {
            tokio::time::sleep(Duration::from_millis(intervals.next_millis(1000, 2500))).await;
            next.kill(&mut stack);
            next.start(&mut stack, &[])?;
            match next {
                Component::Bridge => (done.0 += 1, next = Component::Operator),
                Component::Operator => (done.1 += 1, next = Component::Bridge),
            };
        }
        Ok::<_, anyhow::Error>(done)
    };
    let (bench, kills) = tokio::join!(bench, kills);
    let (bridge_kills, operator_kills) = kills?;
    let bench = bench?;
    let lines = nodepool_e2e::stack::json_lines(&bench);
    let result = lines
        .iter()
        .find_map(|line| line.get("bench"))
        .cloned()
        .with_context(|| format!("no bench result: {}", String::from_utf8_lossy(&bench.stderr)))?;
    eprintln!("kill loop: {bridge_kills} bridge and {operator_kills} operator kills; {result}");
    assert!(bridge_kills >= KILLS && operator_kills >= KILLS);
    let requests = result["requests"].as_u64().context("requests")?;
    assert!(requests > 100, "too little load to mean anything: {result}");
    assert_eq!(result["fulfilled"].as_u64(), Some(requests), "every request fulfilled: {result}");
    assert_eq!(result["returned"].as_u64(), Some(requests), "every build ran: {result}");
    assert_eq!(result["errors"], 0, "{result}");
    assert_eq!(result["double_booked"], 0, "a slot was in two builds at once: {result}");

    invariant::wait_until_it_holds(&stack, SETTLE).await?;
    // A slot Zuul returned last is registered afresh (host check, new znode) after the load
    // stops: wait for that, then every slot must have its znode again (a lost one never does).
    let deadline = tokio::time::Instant::now() + SETTLE;
    let ours = loop {
        let ours = invariant::our_znodes(&stack).await?;
        if ours.len() == slots as usize + 1 || tokio::time::Instant::now() > deadline {
            break ours;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(ours.len(), slots as usize + 1, "one znode per slot after the kills: {ours:?}");
    invariant::wait_until_it_holds(&stack, SETTLE).await?;
    Ok(())
}
