//! The runtime end to end, as root: real namespaces, cgroups, overlay rootfs, veth pairs on
//! bridges made per test (each test its own bridge and 10.244.<n>.0/24), busybox as the image.

mod common;

use std::time::{Duration, Instant};

use common::{skip_unless_root, Env};
use corral_runtime::{ContainerState, ExitReason, Resources};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn exit_of(st: &ContainerState) -> (i32, Option<i32>, ExitReason) {
    match st {
        ContainerState::Exited {
            code,
            signal,
            reason,
            ..
        } => (*code, *signal, *reason),
        other => panic!("not exited: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_logs_in_cri_format_and_exit_codes() {
    if skip_unless_root("echo_logs_in_cri_format_and_exit_codes") {
        return;
    }
    let env = Env::new("echo");
    let pod = env.pod("pod-echo", None).await;
    env.rt
        .start_container(&pod, env.spec("echo-ok", "echo hi"))
        .await
        .unwrap();
    let st = env.exited("echo-ok").await;
    assert_eq!(exit_of(&st), (0, None, ExitReason::Completed));
    let log = env.log("echo-ok");
    let line = log.lines().next().expect("a log line");
    let (ts, rest) = line.split_once(' ').unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{line}");
    assert_eq!(rest, "stdout F hi");

    env.rt
        .start_container(
            &pod,
            env.spec("echo-3", "echo oops >&2; printf partial; exit 3"),
        )
        .await
        .unwrap();
    let st = env.exited("echo-3").await;
    assert_eq!(exit_of(&st), (3, None, ExitReason::Error));
    assert_eq!(env.log_lines("echo-3", "stderr"), vec!["oops"]);
    assert_eq!(env.log_lines("echo-3", "stdout"), vec!["partial"]);

    // With a terminal (made in the container's own devpts), output is logged as stdout.
    let mut spec = env.spec("echo-tty", "tty; echo on-a-terminal");
    spec.tty = true;
    env.rt.start_container(&pod, spec).await.unwrap();
    assert_eq!(exit_of(&env.exited("echo-tty").await).0, 0);
    let lines: Vec<String> = env
        .log_lines("echo-tty", "stdout")
        .iter()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    assert_eq!(
        lines,
        vec!["/dev/pts/0", "on-a-terminal"],
        "{}",
        env.log("echo-tty")
    );

    // A command that does not exist fails the start, and leaves nothing behind.
    let mut bad = env.spec("echo-bad", "");
    bad.args = vec!["no-such-command".into()];
    let err = env.rt.start_container(&pod, bad).await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    assert!(env.rt.container_state("echo-bad").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_sees_its_own_namespaces() {
    if skip_unless_root("container_sees_its_own_namespaces") {
        return;
    }
    let mut env = Env::new("ns");
    env.own_bridge("crt-ns");
    let pod = env.pod("pod-ns", Some(("crt-ns", 12, 2))).await;
    let script = "echo pid=$$; hostname; ls /sys/class/net | tr '\\n' ' '; echo; \
                  ip -4 -o addr show eth0 | grep -o 'inet [0-9./]*'; ip route | grep default; \
                  cat /etc/hostname; cat /etc/resolv.conf | head -1; ps -o pid,comm | wc -l; \
                  id -u; cat /proc/self/status | grep CapEff";
    env.rt
        .start_container(&pod, env.spec("ns-1", script))
        .await
        .unwrap();
    let st = env.exited("ns-1").await;
    let out = env.log_lines("ns-1", "stdout");
    assert_eq!(
        exit_of(&st).0,
        0,
        "{out:?} {:?}",
        env.log_lines("ns-1", "stderr")
    );
    assert_eq!(out[0], "pid=1");
    assert_eq!(out[1], "pod-ns");
    assert_eq!(out[2].trim(), "eth0 lo");
    assert_eq!(out[3], "inet 10.244.12.2/24");
    assert!(
        out[4].starts_with("default via 10.244.12.1 dev eth0"),
        "{}",
        out[4]
    );
    assert_eq!(out[5], "pod-ns");
    assert_eq!(out[6], "nameserver 10.96.0.10");
    // ps header + sh + ps (+ wc): only the container's own processes.
    assert!(out[7].trim().parse::<u32>().unwrap() <= 4, "{out:?}");
    assert_eq!(out[8], "0");
    // The default capability set (no CAP_SYS_ADMIN, bit 21).
    let caps = u64::from_str_radix(out[9].split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(caps & (1 << 21), 0, "{}", out[9]);
    assert_ne!(caps & (1 << 13), 0, "{}", out[9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_one_bridge_reach_each_other() {
    if skip_unless_root("pods_on_one_bridge_reach_each_other") {
        return;
    }
    let mut env = Env::new("net");
    env.own_bridge("crt-net");
    let a = env.pod("pod-a", Some(("crt-net", 13, 2))).await;
    let b = env.pod("pod-b", Some(("crt-net", 13, 3))).await;
    env.rt
        .start_container(
            &a,
            env.spec(
                "net-httpd",
                "mkdir -p /www && echo hello-from-a > /www/index.html && echo up && exec httpd -f -p 8080 -h /www",
            ),
        )
        .await
        .unwrap();
    env.wait_for_log("net-httpd", "up").await;
    let fetch = |url: &str| {
        format!("for i in $(seq 50); do wget -q -O - {url} && exit 0; sleep 0.1; done; exit 1")
    };
    env.rt
        .start_container(&b, env.spec("net-wget", &fetch("http://10.244.13.2:8080/")))
        .await
        .unwrap();
    let st = env.exited("net-wget").await;
    assert_eq!(exit_of(&st).0, 0, "{}", env.log("net-wget"));
    assert_eq!(env.log_lines("net-wget", "stdout"), vec!["hello-from-a"]);

    env.rt
        .start_container(&b, env.spec("net-ping", "ping -c 1 -W 5 10.244.13.2"))
        .await
        .unwrap();
    let st = env.exited("net-ping").await;
    assert_eq!(exit_of(&st).0, 0, "{}", env.log("net-ping"));

    // Containers of one pod share its network namespace: localhost reaches the server.
    env.rt
        .start_container(&a, env.spec("net-local", &fetch("http://127.0.0.1:8080/")))
        .await
        .unwrap();
    let st = env.exited("net-local").await;
    assert_eq!(exit_of(&st).0, 0, "{}", env.log("net-local"));
    assert_eq!(env.log_lines("net-local", "stdout"), vec!["hello-from-a"]);

    // nc over the bridge too.
    env.rt
        .start_container(&b, env.spec(
                "net-nc-server",
                // busybox nc half-closes when its stdin ends; with stdin at EOF at once the
                // client could see that FIN and exit 0 before sending (a flake under I/O
                // load). A FIFO held open by `sleep` keeps the server's stdin open.
                "mkfifo /tmp/in; sleep 3600 > /tmp/in & echo ready; while true; do x=$(nc -l -p 9000 < /tmp/in); case \"$x\" in *ping-over-nc*) echo \"$x\"; exit 0;; esac; done",
            ))
        .await
        .unwrap();
    env.wait_for_log("net-nc-server", "ready").await;
    env.rt
        .start_container(
            &a,
            env.spec(
                "net-nc-client",
                "for i in $(seq 50); do echo ping-over-nc | nc 10.244.13.3 9000 && exit 0; sleep 0.1; done; exit 1",
            ),
        )
        .await
        .unwrap();
    assert_eq!(exit_of(&env.exited("net-nc-client").await).0, 0);
    let st = env.exited("net-nc-server").await;
    assert_eq!(exit_of(&st).0, 0);
    assert!(env.log("net-nc-server").contains("stdout F ping-over-nc"));

    // The gateway's MAC is the bridge's own, pinned: a bridge left to itself takes its
    // lowest port MAC, so removing one pod changed the gateway under every other pod's
    // ARP cache and their traffic vanished for half a minute.
    let bridge_mac = || std::fs::read_to_string("/sys/class/net/crt-net/address").unwrap();
    assert_eq!(bridge_mac().trim(), "0a:58:0a:f4:0d:01");
    let c = env.pod("pod-c", Some(("crt-net", 13, 4))).await;
    env.rt.remove_sandbox(&c.pod_uid).await.unwrap();
    env.rt.remove_container("net-httpd").await.unwrap();
    env.rt.remove_sandbox("pod-a").await.unwrap();
    assert_eq!(bridge_mac().trim(), "0a:58:0a:f4:0d:01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_is_oom_killed() {
    if skip_unless_root("memory_limit_is_oom_killed") {
        return;
    }
    let env = Env::new("oom");
    let pod = env.pod("pod-oom", None).await;
    let mut spec = env.spec("oom-1", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done");
    spec.resources = Resources {
        memory_limit_bytes: Some(16 << 20),
        cpu_millis_limit: Some(1000),
        cpu_millis_request: Some(100),
        pids_limit: Some(64),
    };
    env.rt.start_container(&pod, spec).await.unwrap();
    let st = env.exited("oom-1").await;
    assert_eq!(exit_of(&st), (137, Some(9), ExitReason::OOMKilled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sends_term_then_kill_after_grace() {
    if skip_unless_root("stop_sends_term_then_kill_after_grace") {
        return;
    }
    let env = Env::new("stop");
    let pod = env.pod("pod-stop", None).await;
    env.rt
        .start_container(
            &pod,
            env.spec(
                "stop-trap",
                "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.1; done",
            ),
        )
        .await
        .unwrap();
    env.rt
        .start_container(
            &pod,
            env.spec(
                "stop-ignore",
                "trap '' TERM; echo ready; while true; do sleep 0.1; done",
            ),
        )
        .await
        .unwrap();
    env.wait_for_log("stop-trap", "ready").await;
    env.wait_for_log("stop-ignore", "ready").await;

    let t = Instant::now();
    let st = env
        .rt
        .stop_container("stop-trap", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(exit_of(&st), (7, None, ExitReason::Error));
    // Well before the 10 s grace: TERM ended it (a loaded machine has taken over 5 s).
    assert!(t.elapsed() < Duration::from_secs(9), "{:?}", t.elapsed());
    assert!(env.log("stop-trap").contains("stdout F got-term"));

    let t = Instant::now();
    let st = env
        .rt
        .stop_container("stop-ignore", Duration::from_millis(700))
        .await
        .unwrap();
    assert_eq!(exit_of(&st), (137, Some(9), ExitReason::Error));
    assert!(t.elapsed() >= Duration::from_millis(700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_inside_the_container() {
    if skip_unless_root("exec_runs_inside_the_container") {
        return;
    }
    let mut env = Env::new("exec");
    env.own_bridge("crt-exec");
    let pod = env.pod("pod-exec", Some(("crt-exec", 14, 2))).await;
    let mut spec = env.spec("exec-main", "echo ready; exec sleep 1000");
    spec.resources.memory_limit_bytes = Some(64 << 20);
    env.rt.start_container(&pod, spec).await.unwrap();
    env.wait_for_log("exec-main", "ready").await;

    let run = |argv: &[&str]| {
        let rt = env.rt.clone();
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        async move {
            let mut p = rt.exec("exec-main", argv, false).await.unwrap();
            drop(p.stdin.take());
            let mut out = String::new();
            p.stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .await
                .unwrap();
            let mut err = String::new();
            p.stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .await
                .unwrap();
            (p.wait().await.unwrap().code, out, err)
        }
    };
    assert_eq!(
        run(&["cat", "/etc/hostname"]).await,
        (0, "pod-exec\n".into(), String::new())
    );
    assert_eq!(run(&["sh", "-c", "exit 5"]).await.0, 5);
    // Same pid namespace (pid 1 is the container's sleep), same network, same cgroup.
    assert_eq!(run(&["cat", "/proc/1/comm"]).await.1, "sleep\n");
    let (_, ip, _) = run(&[
        "sh",
        "-c",
        "ip -4 -o addr show eth0 | grep -o 'inet [0-9.]*'",
    ])
    .await;
    assert_eq!(ip.trim(), "inet 10.244.14.2");
    let (_, cg, _) = run(&["cat", "/proc/self/cgroup"]).await;
    assert!(
        cg.contains(&format!("{}/exec-main", env.cgroup_parent)),
        "{cg}"
    );
    let (code, _, err) = run(&["no-such-binary"]).await;
    assert_eq!(code, 127, "{err}");

    // stdin is passed through.
    let mut p = env
        .rt
        .exec("exec-main", vec!["cat".into()], false)
        .await
        .unwrap();
    p.stdin
        .as_mut()
        .unwrap()
        .write_all(b"through stdin\n")
        .await
        .unwrap();
    drop(p.stdin.take());
    let mut out = String::new();
    p.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert_eq!(out, "through stdin\n");
    assert_eq!(p.wait().await.unwrap().code, 0);

    // A terminal, resized.
    let mut p = env
        .rt
        .exec(
            "exec-main",
            vec![
                "sh".into(),
                "-c".into(),
                "sleep 0.3; tty; stty size; exit 4".into(),
            ],
            true,
        )
        .await
        .unwrap();
    p.resize(100, 40).unwrap();
    let mut pty = p.pty.take().unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match pty.read(&mut buf).await {
            Ok(0) | Err(_) => break, // EIO once the terminal's other side is closed
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("40 100"), "{out}");
    assert_eq!(p.wait().await.unwrap().code, 4);

    let stats = env.rt.stats("exec-main").unwrap();
    assert!(stats.memory_working_set_bytes.unwrap() > 0, "{stats:?}");
    assert!(stats.cpu_usage_nanos.is_some(), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_runtime_adopts_running_containers() {
    if skip_unless_root("a_new_runtime_adopts_running_containers") {
        return;
    }
    let env = Env::new("adopt");
    let pod = env.pod("pod-adopt", None).await;
    {
        let rt1 = common::runtime(env.tmp.path(), &env.cgroup_parent);
        rt1.start_container(&pod, env.spec("adopt-1", "echo ready; exec sleep 1000"))
            .await
            .unwrap();
        drop(rt1);
    }
    env.wait_for_log("adopt-1", "ready").await;
    // The shim is not our child and not in our session.
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.state_dir().join("containers/adopt-1/state.json")).unwrap(),
    )
    .unwrap();
    let shim = state["shim_pid"].as_i64().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{shim}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_ne!(
        fields[1].parse::<u32>().unwrap(),
        std::process::id(),
        "ppid"
    );
    assert_ne!(
        fields[3].parse::<i32>().unwrap(),
        unsafe { libc::getsid(0) },
        "session"
    );

    let rt2 = common::runtime(env.tmp.path(), &env.cgroup_parent);
    let list = rt2.list_containers().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, "adopt-1");
    assert_eq!(list[0].pod_uid, "pod-adopt");
    let pid = match list[0].state {
        ContainerState::Running { pid, .. } => pid,
        ref s => panic!("{s:?}"),
    };
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let waiter = {
        let rt = rt2.clone();
        tokio::spawn(async move { rt.wait_exit("adopt-1").await })
    };
    let st = rt2
        .stop_container("adopt-1", Duration::from_secs(1))
        .await
        .unwrap();
    // sleep as pid 1 has no TERM handler, so the kernel ignores TERM: killed after the grace.
    assert_eq!(exit_of(&st), (137, Some(9), ExitReason::Error));
    assert_eq!(waiter.await.unwrap().unwrap(), st);
    assert_eq!(
        rt2.sandbox("pod-adopt").unwrap().unwrap().hostname,
        "pod-adopt"
    );
}

fn mountinfo_mentions(path: &std::path::Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(path.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_leaves_nothing_behind() {
    if skip_unless_root("remove_leaves_nothing_behind") {
        return;
    }
    let mut env = Env::new("remove");
    env.own_bridge("crt-rm");
    let pod = env.pod("pod-rm", Some(("crt-rm", 15, 2))).await;
    let mut spec = env.spec("rm-1", "echo ready; exec sleep 1000");
    spec.resources.memory_limit_bytes = Some(32 << 20);
    spec.stdin = true;
    env.rt.start_container(&pod, spec).await.unwrap();
    env.wait_for_log("rm-1", "ready").await;

    let veth = pod.host_veth.clone().unwrap();
    let netns = pod.netns_path.clone().unwrap();
    let cgroup = match env.rt.capabilities().cgroup {
        Some(corral_runtime::CgroupVersion::V1) => {
            format!("/sys/fs/cgroup/memory/{}/rm-1", env.cgroup_parent)
        }
        _ => format!("/sys/fs/cgroup/{}/rm-1", env.cgroup_parent),
    };
    assert!(std::path::Path::new(&cgroup).exists());
    assert!(std::path::Path::new(&format!("/sys/class/net/{veth}")).exists());
    assert!(mountinfo_mentions(&netns));

    env.rt.remove_container("rm-1").await.unwrap();
    env.rt.remove_sandbox("pod-rm").await.unwrap();

    assert!(!mountinfo_mentions(&env.state_dir()), "mount left");
    assert!(!std::path::Path::new(&cgroup).exists(), "cgroup left");
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/{veth}")).exists(),
        "veth left"
    );
    assert!(!netns.exists(), "netns file left");
    assert!(!env.state_dir().join("containers/rm-1").exists());
    assert!(!env.state_dir().join("sandboxes/pod-rm").exists());
    assert!(env.rt.list_containers().unwrap().is_empty());
    assert!(std::path::Path::new("/sys/class/net/crt-rm").exists());
    env.rt.cleanup_all().await.unwrap();
    assert!(
        !std::path::Path::new("/sys/class/net/crt-rm").exists(),
        "bridge left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_time_of_20_pods() {
    if skip_unless_root("start_time_of_20_pods") {
        return;
    }
    let mut env = Env::new("speed");
    env.own_bridge("crt-speed");
    let mut times = Vec::new();
    let mut sandbox_times = Vec::new();
    let total = Instant::now();
    for i in 0..20u8 {
        let t = Instant::now();
        let pod = env
            .pod(&format!("pod-speed-{i}"), Some(("crt-speed", 16, 10 + i)))
            .await;
        sandbox_times.push(t.elapsed());
        let mut spec = env.spec(&format!("speed-{i}"), "exec sleep 1000");
        spec.resources.memory_limit_bytes = Some(64 << 20);
        spec.resources.cpu_millis_limit = Some(500);
        let info = env.rt.start_container(&pod, spec).await.unwrap();
        times.push(t.elapsed());
        assert!(info.state.is_running(), "{:?}", info.state);
    }
    let total = total.elapsed();
    times.sort();
    sandbox_times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "of which create_sandbox: p50 {:.1} ms, max {:.1} ms",
        ms(sandbox_times[10]),
        ms(sandbox_times[19])
    );
    println!(
        "create_sandbox + start_container, 20 pods (bridge, netns, veth, overlay, cgroup, shim): \
         total {:.1} ms, p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        ms(total),
        ms(times[10]),
        ms(times[18]),
        ms(times[19])
    );
    let t = Instant::now();
    env.rt.cleanup_all().await.unwrap();
    println!("cleanup_all of 20 pods: {:.1} ms", ms(t.elapsed()));
}
