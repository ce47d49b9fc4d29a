//! The container shim as its own binary, for tests and for hosts that install it separately;
//! the corral binary runs the same code as `corral shim ...`.

fn main() {
    corral_runtime::shim::main()
}
